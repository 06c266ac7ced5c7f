"""A sparkline drawn from zero: one column per value, newest on the right.

Textual's ``Sparkline`` stretches a few values over the whole width and scales between the
series' own minimum and maximum, so a steady 200 ms TTFT that wobbles by 1 ms fills the box
from bottom to top. Here bars start at zero (or a fixed ceiling such as 100 %), so a steady
value reads as a steady line and a doubling reads as twice as tall.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.style import Style
from rich.text import Text
from textual.app import RenderResult
from textual.color import Color
from textual.reactive import reactive
from textual.widget import Widget

EIGHTHS = " ▁▂▃▄▅▆▇█"


def bar_levels(
    values: Sequence[float], width: int, height: int, ceiling: float | None
) -> list[int]:
    """The height in eighths of a cell of each of the last ``width`` values (a pure helper).

    A value above zero always shows at least one eighth, so a small non-zero reading is not
    mistaken for nothing.
    """
    shown = list(values[-width:]) if width > 0 else []
    if not shown:
        return []
    top = ceiling if ceiling is not None else max(shown)
    full = height * 8
    levels = []
    for v in shown:
        if top <= 0 or v <= 0:
            levels.append(0)
        else:
            levels.append(max(1, min(full, round(v / top * full))))
    return levels


def bar_rows(levels: Sequence[int], width: int, height: int) -> list[str]:
    """Rows of block characters, top row first, right-aligned in ``width`` columns."""
    pad = width - len(levels)
    rows = []
    for r in range(height):
        base = (height - 1 - r) * 8
        cells = (EIGHTHS[min(8, max(0, lv - base))] for lv in levels)
        rows.append(" " * pad + "".join(cells))
    return rows


def render_bars(
    values: Sequence[float],
    width: int,
    height: int,
    ceiling: float | None,
    high: Color,
    low: Color,
) -> Text:
    """The bars as styled text: taller bars in ``high``, lower ones blended toward ``low``."""
    levels = bar_levels(values, width, height, ceiling)
    rows = bar_rows(levels, width, height)
    full = max(1, height * 8)
    styles = [Style(color=low.blend(high, lv / full).rich_color) for lv in levels]
    pad = width - len(levels)
    text = Text(no_wrap=True, overflow="crop")
    for i, row in enumerate(rows):
        if i:
            text.append("\n")
        text.append(row[:pad])
        for ch, style in zip(row[pad:], styles, strict=True):
            text.append(ch, style)
    return text


class Trend(Widget):
    """A series of values as bars from zero, in the widget's CSS ``color``."""

    DEFAULT_CSS = """
    Trend { height: 1; }
    """

    values: reactive[tuple[float, ...]] = reactive(tuple)
    """The series, oldest first; only the newest values that fit are drawn."""
    ceiling: reactive[float | None] = reactive(None)
    """Fixed top of the scale (100 for percentages); ``None``: the largest value shown."""

    def __init__(
        self,
        *,
        ceiling: float | None = None,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.set_reactive(Trend.ceiling, ceiling)

    def render(self) -> RenderResult:
        high = self.styles.color
        low = self.background_colors[1].blend(high, 0.35)
        return render_bars(self.values, self.size.width, self.size.height, self.ceiling, high, low)
