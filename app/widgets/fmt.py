"""Numbers as the widgets print them: one place, so every panel writes a value the same way.

``None`` (not measured, not reported) always prints as an em dash.
"""

from __future__ import annotations

DASH = "—"


def num(value: float | None, digits: int = 1) -> str:
    """A plain number with thousands separators: ``1,234.5``."""
    if value is None:
        return DASH
    return f"{value:,.{digits}f}"


def ms(value: float | None) -> str:
    """Milliseconds: one decimal below 10 s, whole numbers above (``200.4``, ``12,345``)."""
    if value is None:
        return DASH
    return num(value, 1 if abs(value) < 10_000 else 0)


def rate(value: float | None) -> str:
    """A per-second rate: two decimals below 10 (``1.25``), one above (``48.7``)."""
    if value is None:
        return DASH
    return num(value, 2 if abs(value) < 10 else 1)


def pct(value: float | None, digits: int = 0) -> str:
    """A percentage already in 0..100."""
    return DASH if value is None else f"{value:.{digits}f}%"


def share(value: float | None) -> str:
    """A share in 0..1 as a percentage."""
    return DASH if value is None else f"{value * 100:.1f}%"


def size(value: float | None) -> str:
    """Bytes in binary units: ``512 MiB``, ``1.4 GiB``."""
    if value is None:
        return DASH
    v = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(v) < 1024 or unit == "TiB":
            return f"{v:.0f} {unit}" if unit in ("B", "KiB", "MiB") else f"{v:.1f} {unit}"
        v /= 1024
    return DASH  # unreachable


def duration(seconds: float | None) -> str:
    """Elapsed time as ``mm:ss`` or ``h:mm:ss``."""
    if seconds is None:
        return DASH
    s = max(0, int(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


def size_pair(used: float | None, total: float | None) -> str:
    """``9.8 / 24.0 GiB``: both in the unit of the total."""
    if used is None or total is None:
        return f"{size(used)} / {size(total)}"
    unit, div = "B", 1.0
    for u in ("KiB", "MiB", "GiB", "TiB"):
        if total >= div * 1024:
            unit, div = u, div * 1024
    digits = 1 if unit in ("GiB", "TiB") else 0
    return f"{used / div:.{digits}f} / {total / div:.{digits}f} {unit}"
