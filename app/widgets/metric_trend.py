"""One per-request metric over the last minutes: bars from zero, with P50/P95 in the border."""

from __future__ import annotations

from collections.abc import Callable

from textual.reactive import reactive

from llmtop.app.widgets.trend import Trend
from llmtop.core import fmt
from llmtop.core.metrics import EMPTY_STATS, Stats


class MetricTrend(Trend):
    """A ``Trend`` of one metric (TTFT, decode tok/s) titled with its name and unit, and its
    newest value, P50 and P95 over the same window in the bottom border."""

    DEFAULT_CSS = """
    MetricTrend { height: 4; }
    """

    stats: reactive[Stats] = reactive(EMPTY_STATS)
    """Distribution of the values in the window (from the aggregator)."""

    def __init__(
        self,
        title: str,
        unit: str,
        *,
        formatter: Callable[[float | None], str] = fmt.num,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.unit = unit
        self.formatter = formatter
        self.border_title = f"{title} [dim]{unit}[/]"

    def watch_values(self) -> None:
        self._caption()

    def watch_stats(self) -> None:
        self._caption()

    def _caption(self) -> None:
        f = self.formatter
        s = self.stats
        if s.n == 0:
            self.border_subtitle = "waiting for requests"
            return
        last = self.values[-1] if self.values else None
        core = f"p50 [b]{f(s.p50)}[/]  p95 [b]{f(s.p95)}[/]"
        if self.size.width >= 44:  # the newest value and the count when there is room
            core = f"now [b]{f(last)}[/]  {core}  [dim]n={s.n}[/]"
        self.border_subtitle = core

    def on_resize(self) -> None:
        self._caption()
