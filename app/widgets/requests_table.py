"""Requests in flight, then the last finished ones: step, prompt, TTFT, tokens, TPS, status.

A plain widget that draws only the rows that fit, rather than a DataTable: at 64 streams the
rows change on every tick, and a DataTable re-measures every cell of every row on each change
(~50 ms a tick, measured), where this costs about a millisecond.
"""

from __future__ import annotations

from typing import ClassVar

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import RenderResult
from textual.reactive import reactive
from textual.widget import Widget

from llmtop.core import fmt
from llmtop.live.snapshot import LiveRequest

COLUMNS: tuple[tuple[str, int, str], ...] = (
    ("#", 5, "right"),
    ("step", 10, "left"),
    ("prompt", 12, "left"),
    ("state", 9, "left"),
    ("TTFT ms", 9, "right"),
    ("tokens", 7, "right"),
    ("tok/s", 7, "right"),
    ("E2E ms", 9, "right"),
)


def request_cells(r: LiveRequest) -> tuple[str, ...]:
    """The cells of one request, as text."""
    state = "warm-up" if r.warmup and r.status == "ok" else r.status
    return (
        str(r.request_id), r.step, r.prompt_label, state, fmt.num(r.ttft_ms), f"{r.tokens:,}",
        fmt.num(r.decode_tps), fmt.num(r.e2e_ms), r.error or "",
    )  # fmt: skip


class RequestsTable(Widget):
    """One row per request, those in flight first (oldest on top), then the finished (newest
    first); as many as fit, and a last line counting the rest."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "requests-table--header",
        "requests-table--running",
        "requests-table--error",
        "requests-table--muted",
    }

    rows_data: reactive[tuple[LiveRequest, ...]] = reactive(tuple)
    """In flight then finished, in display order."""
    empty_hint: reactive[str] = reactive("no requests yet: press l to launch a run")
    """What an empty table says (a starting run says what it waits for)."""

    def render(self) -> RenderResult:
        style = self.get_component_rich_style
        head, muted = style("requests-table--header"), style("requests-table--muted")
        state_style = {
            "running": style("requests-table--running"),
            "error": style("requests-table--error"),
            "cancelled": muted,
        }
        rows = self.rows_data
        if not rows:
            return Text(self.empty_hint, style=muted)
        room = max(1, self.size.height - 1)
        shown = rows if len(rows) <= room else rows[: room - 1]
        table = Table.grid(padding=(0, 1))
        for _, width, justify in COLUMNS:
            table.add_column(width=width, justify=justify, no_wrap=True)  # type: ignore[arg-type]
        table.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        table.add_row(*(Text(name, style=head) for name, _, _ in COLUMNS), Text("note", style=head))
        for r in shown:
            cells = request_cells(r)
            row_style = state_style.get(r.status)
            table.add_row(*cells[:3], Text(cells[3], style=row_style or ""), *cells[4:8],
                          Text(cells[8], style=muted))  # fmt: skip
        if len(shown) == len(rows):
            return table
        flying = sum(1 for r in rows if r.status == "running")
        hidden = rows[len(shown) :]
        hidden_flying = sum(1 for r in hidden if r.status == "running")
        what = f"{len(hidden) - hidden_flying:,} finished"
        if hidden_flying:
            what = f"{hidden_flying:,} of the {flying:,} in flight, {what}"
        more = Text(f"      … {len(hidden):,} more: {what}", style=muted, no_wrap=True,
                    overflow="ellipsis")  # fmt: skip
        return Group(table, more)
