"""The history of runs: one row per run with its key numbers; Enter opens one, Space marks
runs to compare."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.binding import Binding
from textual.reactive import reactive
from textual.widgets import DataTable

from llmtop.app.messages import CompareRequested, RunSelected
from llmtop.core import fmt

COLUMNS = (
    " ", "id", "started", "name", "status", "backend", "model", "scenario", "reqs", "errs",
    "TTFT p50", "E2E p95", "decode tok/s", "out tok/s",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class RunItem:
    """One run as the table shows it (the screen builds these from storage queries)."""

    id: int
    started: str
    name: str
    status: str
    backend: str
    model: str
    scenario: str
    requests: int
    errors: int
    ttft_p50_ms: float | None
    e2e_p95_ms: float | None
    decode_tps: float | None
    out_tok_per_s: float | None


class RunsTable(DataTable[object]):
    """Runs newest first; marked runs (for comparing) carry a diamond in the first column."""

    BINDINGS = [  # noqa: RUF012 (Textual's own type)
        Binding("space", "mark", "Mark"),
        Binding("c", "compare", "Compare"),
    ]

    runs: reactive[tuple[RunItem, ...]] = reactive(tuple)
    marked: reactive[tuple[int, ...]] = reactive(tuple)
    """Run ids marked for comparison, in the order marked (at most two kept)."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        self.add_columns(*COLUMNS)

    def _fill(self) -> None:
        row = self.cursor_row
        self.clear()
        theme = self.app.current_theme
        status_style = {"finished": "", "running": f"bold {theme.success}",
                        "failed": f"bold {theme.error}", "interrupted": theme.warning or "",
                        "cancelled": theme.warning or ""}  # fmt: skip
        for r in self.runs:
            mark = Text("◆", style=f"bold {theme.accent}") if r.id in self.marked else ""
            self.add_row(
                mark,
                Text(str(r.id), justify="right"),
                r.started,
                r.name,
                Text(r.status, style=status_style.get(r.status, "")),
                r.backend,
                r.model,
                r.scenario,
                Text(f"{r.requests:,}", justify="right"),
                Text(
                    f"{r.errors:,}",
                    justify="right",
                    style=f"bold {theme.error}" if r.errors else "",
                ),
                Text(fmt.num(r.ttft_p50_ms), justify="right"),
                Text(fmt.num(r.e2e_p95_ms), justify="right"),
                Text(fmt.num(r.decode_tps), justify="right"),
                Text(fmt.num(r.out_tok_per_s), justify="right"),
                key=str(r.id),
            )
        if self.runs:
            self.move_cursor(row=min(row, len(self.runs) - 1), animate=False)

    def watch_runs(self) -> None:
        self._fill()

    def watch_marked(self) -> None:
        self._fill()

    def selected_id(self) -> int | None:
        if not self.runs or self.cursor_row >= len(self.runs):
            return None
        return self.runs[self.cursor_row].id

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.row_key.value is not None:
            self.post_message(RunSelected(int(event.row_key.value)))

    def action_mark(self) -> None:
        rid = self.selected_id()
        if rid is None:
            return
        if rid in self.marked:
            self.marked = tuple(m for m in self.marked if m != rid)
        else:
            self.marked = (*self.marked, rid)[-2:]

    def action_compare(self) -> None:
        """Compare the two marked runs, or the one under the cursor with the one below it."""
        if len(self.marked) == 2:
            a, b = self.marked
        else:
            rid = self.selected_id()
            ids = [r.id for r in self.runs]
            if rid is None or ids.index(rid) + 1 >= len(ids):
                self.notify("mark two runs with Space, then press c", severity="warning")
                return
            a, b = ids[ids.index(rid) + 1], rid  # the older one is the baseline
        self.post_message(CompareRequested(a, b))
