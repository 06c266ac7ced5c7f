"""The run's percentile table: mean, P50, P90, P95, P99 of TTFT, TPOT, E2E and decode tok/s,
then throughput, errors and goodput against the scenario's SLOs."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from rich.console import Group
from rich.style import Style
from rich.table import Table
from rich.text import Text
from textual.app import RenderResult
from textual.reactive import reactive
from textual.widget import Widget

from llmtop.core import fmt
from llmtop.core.metrics import Slo, Stats
from llmtop.live.snapshot import RunTable

ROWS: tuple[tuple[str, str, str, Callable[[float | None], str]], ...] = (
    ("TTFT", "ms", "ttft_ms", fmt.num),
    ("TPOT", "ms", "tpot_ms", fmt.num),
    ("E2E", "ms", "e2e_ms", fmt.num),
    ("decode", "tok/s", "decode_tps", fmt.num),
)
COLUMNS = ("mean", "p50", "p90", "p95", "p99")


def slo_text(slo: Slo) -> str:
    """``TTFT ≤ 500 ms, TPOT ≤ 50 ms``; empty when the run has no objectives."""
    parts = [
        f"{name} ≤ {limit:g} ms"
        for name, limit in (("TTFT", slo.ttft_ms), ("TPOT", slo.tpot_ms), ("E2E", slo.e2e_ms))
        if limit is not None
    ]
    return ", ".join(parts)


class PercentileTable(Widget):
    """Distribution of every per-request metric of the current run (warm-up excluded)."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "percentile-table--header",
        "percentile-table--label",
        "percentile-table--unit",
        "percentile-table--good",
        "percentile-table--bad",
    }

    table: reactive[RunTable] = reactive(RunTable)
    """The run's statistics (from the aggregator's snapshot, or a stored run)."""

    def watch_table(self, old: RunTable, new: RunTable) -> None:
        # Only the cancelled/warm-up line changes the height; a layout pass redraws every panel.
        extra = lambda t: bool(t.cancelled or t.warmup)  # noqa: E731
        self.refresh(layout=extra(old) != extra(new))

    def render(self) -> RenderResult:
        t = self.table
        head = self.get_component_rich_style("percentile-table--header")
        label = self.get_component_rich_style("percentile-table--label")
        unit = self.get_component_rich_style("percentile-table--unit")
        grid = Table.grid(padding=(0, 1), expand=True)
        grid.add_column(ratio=2, no_wrap=True)
        for _ in ("n", *COLUMNS):
            grid.add_column(justify="right", ratio=1, no_wrap=True)
        grid.add_row(Text(""), *(Text(c, style=head) for c in ("n", *COLUMNS)))
        for name, u, attr, f in ROWS:
            s: Stats = getattr(t, attr)
            grid.add_row(
                Text.assemble((name, label), " ", (u, unit)),
                Text(f"{s.n:,}" if s.n else fmt.DASH, style=unit),
                *(Text(f(getattr(s, c))) for c in COLUMNS),
            )
        return Group(grid, Text(""), self._totals(t, head))

    def _totals(self, t: RunTable, head: Style) -> Text:
        good = self.get_component_rich_style("percentile-table--good")
        bad = self.get_component_rich_style("percentile-table--bad")
        errors = Text(f"{t.errors:,}", style=bad if t.errors else "")
        if t.error_rate is not None:
            errors.append(f" ({fmt.share(t.error_rate)})", style=bad if t.errors else "")
        goodput = Text(fmt.share(t.goodput))
        if t.goodput is not None:
            goodput.stylize(good if t.goodput >= 0.99 else bad)
        slo = slo_text(t.slo)
        if t.slo.is_set and t.goodput_recent is not None:
            goodput.append("  last min ", style=head)
            goodput.append(fmt.share(t.goodput_recent),
                           style=good if t.goodput_recent >= 0.99 else bad)  # fmt: skip
        out = Text.assemble(
            ("req/s ", head), fmt.num(t.req_per_s), "   ",
            ("tok/s ", head), fmt.num(t.out_tok_per_s), "   ",
            ("errors ", head), errors, "   ",
            ("goodput ", head), goodput,
        )  # fmt: skip
        out.append(f"\nSLOs: {slo}" if slo else "\nno SLOs: goodput is the success rate", head)
        apart = [f"{n:,} {what}" for n, what in ((t.cancelled, "cancelled"), (t.warmup, "warm-up"))
                 if n]  # fmt: skip
        if apart:
            out.append(f"\nnot counted: {' · '.join(apart)}", head)
        return out
