"""How numbers look in reports: one formatter per unit, ``None`` (not measured) as a dash."""

from __future__ import annotations

from datetime import datetime

DASH = "—"


def num(value: float | int | None) -> str:
    """A measurement with as many decimals as its size deserves: 0.123, 4.56, 78.9, 1,234."""
    if value is None:
        return DASH
    if isinstance(value, int):
        return f"{value:,}"
    a = abs(value)
    if a == 0:
        return "0"
    if a < 1:
        return f"{value:.3f}"
    if a < 10:
        return f"{value:.2f}"
    if a < 1000:
        return f"{value:.1f}"
    return f"{value:,.0f}"


def pct(fraction: float | None, digits: int = 1) -> str:
    """A share (0..1) as a percentage."""
    return DASH if fraction is None else f"{fraction * 100:.{digits}f}%"


def signed_pct(fraction: float | None) -> str:
    """A relative change (fraction) as a signed percentage: +101.2%, -3.4%."""
    if fraction is None:
        return DASH
    return f"{fraction * 100:+.1f}%"


def size(n_bytes: float | int | None) -> str:
    """Bytes in binary units: 512 MiB, 3.21 GiB."""
    if n_bytes is None:
        return DASH
    gib = n_bytes / (1 << 30)
    if gib >= 1:
        return f"{gib:.2f} GiB"
    return f"{n_bytes / (1 << 20):.0f} MiB"


def seconds(value: float | None) -> str:
    """A duration: 850 ms, 42.3 s, 12 min 5 s."""
    if value is None:
        return DASH
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 600:
        return f"{value:.1f} s"
    minutes, secs = divmod(round(value), 60)
    return f"{minutes} min {secs} s"


def short(value: float | None) -> str:
    """Three significant digits for chart labels and ticks: 561, 48.9, 0.52, 12,300."""
    if value is None:
        return DASH
    a = abs(value)
    if a >= 1000:
        return f"{value:,.0f}"
    if a >= 100 or a == 0:
        return f"{value:.0f}"
    return f"{value:.3g}"


def local_time(iso: str, seconds: bool = False) -> str:
    """A stored UTC time (ISO text) as the user's local ``YYYY-MM-DD HH:MM[:SS]``: what a person
    compares with their clock, and what ``runs --since`` takes."""
    try:
        moment = datetime.fromisoformat(iso).astimezone()
    except ValueError:
        return iso[: 19 if seconds else 16].replace("T", " ")
    return moment.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
