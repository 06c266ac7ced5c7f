"""How llmtop writes a number for a person: one rule per unit, used by the dashboard, the CLI's
tables and the reports alike, so a value reads the same wherever it is shown.

- A measurement (ms, tokens/s, req/s, counts as floats) has four significant digits, thousands
  whole with separators: ``0.1234``, ``4.560``, ``27.46``, ``103.7``, ``1,235``. Four, because a
  perf engineer compares TPOT to the hundredth of a millisecond (27.46 against a server's 27.46)
  and three would hide that; whole numbers past 1,000 because the digits after the point of a
  4-digit latency are noise.
- A percentage has one name per scale: ``pct`` takes 0..100 (``cpu_pct``, ``util_pct``, as
  psutil and NVML report them), ``share`` takes a fraction 0..1 (error rate, goodput, prefill
  share); both print one decimal: ``93.5%``.
- Bytes are binary units with three significant digits: ``512 MiB``, ``1.41 GiB``, ``23.5 GiB``.
- An axis tick is a value the chart chose, not a measurement: three significant digits and no
  trailing zeros (``19``, ``20.2``, ``1,360``), so the labels stay short; more digits only
  where three would print two ticks alike (``ticks``).
- ``None`` (not measured, not reported) always prints as an em dash.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

DASH = "—"
SIGNIFICANT = 4
"""Significant digits of a measurement below 1,000."""


def _significant(value: float, digits: int) -> str:
    a = abs(value)
    if a >= 10 ** (digits - 1) or a == 0:
        return f"{value:,.0f}"
    decimals = digits - 1 - math.floor(math.log10(a))
    return f"{value:.{decimals}f}"


def num(value: float | int | None) -> str:
    """A measurement: ``0.1234``, ``4.560``, ``27.46``, ``103.7``, ``1,235``; an int as ``1,234``."""
    if value is None:
        return DASH
    if isinstance(value, int) or (isinstance(value, float) and not math.isfinite(value)):
        return f"{value:,}" if isinstance(value, int) else str(value)
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return _significant(value, SIGNIFICANT)


def tick(value: float | None) -> str:
    """An axis tick: ``19``, ``20.2``, ``0.52``, ``1,360``."""
    if value is None:
        return DASH
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def ticks(values: Sequence[float]) -> list[str]:
    """An axis's ticks together: as ``tick``, with more digits only where three would repeat a
    label (4.000, 4.002, 4.004 GiB read ``4``, ``4``, ``4`` at three)."""
    labels = [tick(v) for v in values]
    for digits in range(4, 10):
        if len(set(labels)) == len(labels):
            break
        labels = [f"{v:,.{digits}g}" for v in values]
    return labels


def count(value: float | int | None) -> str:
    """A count (requests, tokens), whole: ``12``, ``1,024``."""
    if value is None:
        return DASH
    return f"{round(value):,}"


def pct(value: float | None) -> str:
    """A percentage already in 0..100 (``cpu_pct``): ``93.5%``."""
    return DASH if value is None else f"{value:.1f}%"


def share(fraction: float | None) -> str:
    """A fraction 0..1 (error rate, goodput) as a percentage: ``0.25`` -> ``25.0%``."""
    return DASH if fraction is None else f"{fraction * 100:.1f}%"


def signed_share(fraction: float | None) -> str:
    """A relative change (a fraction) as a signed percentage: ``+101.2%``, ``-3.4%``."""
    return DASH if fraction is None else f"{fraction * 100:+.1f}%"


_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def _unit_of(n_bytes: float) -> tuple[str, float]:
    """The largest binary unit in which ``n_bytes`` is at least 1, and its size."""
    unit, div = "B", 1.0
    for u in _UNITS[1:]:
        if abs(n_bytes) >= div * 1024:
            unit, div = u, div * 1024
    return unit, div


def _three(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else _significant(value, 3)


def size(n_bytes: float | int | None) -> str:
    """Bytes in binary units, three significant digits: ``512 MiB``, ``1.41 GiB``."""
    if n_bytes is None:
        return DASH
    unit, div = _unit_of(float(n_bytes))
    if unit == "B":
        return f"{n_bytes:.0f} B"
    return f"{_three(n_bytes / div)} {unit}"


def size_pair(used: float | None, total: float | None) -> str:
    """``9.81 / 24.0 GiB``: both in the unit of the total, so they compare at a glance."""
    if used is None or total is None:
        return f"{size(used)} / {size(total)}"
    unit, div = _unit_of(float(total))
    if unit == "B":
        return f"{used:.0f} / {total:.0f} B"
    return f"{_three(used / div)} / {_three(total / div)} {unit}"


def seconds(value: float | None) -> str:
    """A duration in words: ``850 ms``, ``42.3 s``, ``12 min 5 s``."""
    if value is None:
        return DASH
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 600:
        return f"{value:.1f} s"
    minutes, secs = divmod(round(value), 60)
    return f"{minutes} min {secs} s"


def clock(value: float | None) -> str:
    """Elapsed time on a clock: ``mm:ss`` or ``h:mm:ss``."""
    if value is None:
        return DASH
    s = max(0, int(value))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


def local_time(iso: str, with_seconds: bool = False) -> str:
    """A stored UTC time (ISO text) as the user's local ``YYYY-MM-DD HH:MM[:SS]``: what a person
    compares with their clock, and what ``runs --since`` takes."""
    try:
        moment = datetime.fromisoformat(iso).astimezone()
    except ValueError:
        return iso[: 19 if with_seconds else 16].replace("T", " ")
    return moment.strftime("%Y-%m-%d %H:%M:%S" if with_seconds else "%Y-%m-%d %H:%M")


def model_name(model_id: str | None) -> str:
    """A model id as a person reads it: a path to a ``.gguf`` file (llama-server's default id)
    shortened to the file name; any other id unchanged. The full id stays in the database."""
    if not model_id:
        return ""
    if model_id.lower().endswith(".gguf") and ("/" in model_id or "\\" in model_id):
        return model_id.replace("\\", "/").rsplit("/", 1)[-1]
    return model_id
