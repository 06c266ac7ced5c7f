"""A distribution of latencies (E2E, ITL) as a plotext bar chart, in the widget's CSS colour."""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.text import Text
from textual.app import RenderResult
from textual.reactive import reactive
from textual_plotext import PlotextPlot

from llmtop.core import fmt
from llmtop.core.metrics import EMPTY_STATS, Stats

TAIL_FACTOR = 3.0
"""The x axis stops at P99 when the maximum is this many times beyond it, so one stall does not
squash every other bar into the first column; the stragglers are counted in the last bin."""


def bins_for(width: int, n: int) -> int:
    """About one bin per two columns, never more bins than values, within 5..40."""
    return max(5, min(40, (width - 8) // 2, max(n, 1)))


def bin_counts(
    values: Sequence[float], bins: int, hi_clip: float | None = None
) -> tuple[float, float, list[int]]:
    """``(lo, hi, counts)``: equal-width bins from the smallest value to the largest (or
    ``hi_clip``); values above ``hi`` count in the last bin."""
    lo = min(values)
    hi = max(values) if hi_clip is None else hi_clip
    if hi <= lo:
        hi = lo + max(abs(lo) * 0.01, 1e-3)
    width = (hi - lo) / bins
    counts = [0] * bins
    last = bins - 1
    for v in values:
        counts[min(last, max(0, int((v - lo) / width)))] += 1
    return lo, hi, counts


def nice_step(top: int, ticks: int = 4) -> int:
    """A whole-number step for a count axis: 1, 2, 5, 10, 20, 50, ..."""
    raw = max(1.0, top / ticks)
    mag = 10 ** math.floor(math.log10(raw))
    return int(next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw))


class Histogram(PlotextPlot):
    """Counts of ``values`` in equal-width bins; titled with the metric, P50/P99 below."""

    values: reactive[tuple[float, ...]] = reactive(tuple)
    """The samples, in ms (any order)."""
    stats: reactive[Stats] = reactive(EMPTY_STATS)
    """Their distribution, shown in the bottom border (and used to cut a long tail)."""

    def __init__(
        self,
        title: str,
        unit: str = "ms",
        *,
        empty: str = "waiting for requests",
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.unit = unit
        self.empty = empty
        self.border_title = f"{title} [dim]{unit}[/]"

    def watch_stats(self, stats: Stats) -> None:
        self.border_subtitle = (
            ""
            if stats.n == 0
            else f"p50 [b]{fmt.num(stats.p50)}[/]  p99 [b]{fmt.num(stats.p99)}[/]  "
            f"[dim]n={stats.n:,}[/]"
        )

    def render(self) -> RenderResult:
        if not self.values:
            return Text(self.empty, style="dim", justify="center")
        s = self.stats
        clip = s.p99 if s.p99 and s.max and s.max > TAIL_FACTOR * s.p99 else None
        bins = bins_for(self.size.width, len(self.values))
        lo, hi, counts = bin_counts(self.values, bins, clip)
        step = (hi - lo) / bins
        plt = self.plt
        plt.clear_figure()  # ticks and limits too: a redraw must not depend on the one before
        plt.bar(
            [lo + (i + 0.5) * step for i in range(bins)],
            counts,
            width=1.0,
            marker="sd",
            color=self.styles.color.rgb,
        )
        plt.xlim(lo - step * 0.25, hi + step * 0.25)  # plotext rounds: keep the edge bars inside
        # Three labels at most, far apart: plotext nudges labels that crowd each other, and its
        # nudging is not the same from one process to the next.
        n_ticks = 3 if self.size.width >= 36 else 2
        xt = [lo + (hi - lo) * k / (n_ticks - 1) for k in range(n_ticks)]
        plt.xticks(xt, [fmt.tick(x) for x in xt])
        top = max(counts)
        yt = list(range(0, top + 1, nice_step(top)))
        plt.yticks([float(y) for y in yt], [f"{y:,}" for y in yt])
        plt.xlabel(f"{self.unit}{'  (tail beyond P99 in the last bar)' if clip else ''}")
        return super().render()
