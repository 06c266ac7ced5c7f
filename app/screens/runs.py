"""The runs screen: the database's history, newest first; open a run, or compare two."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Footer, Static

from llmtop.app.messages import CompareRequested, RunSelected
from llmtop.app.screens.base import LlmtopScreen
from llmtop.app.widgets.runs_table import RunItem, RunsTable
from llmtop.core import fmt
from llmtop.core.fmt import local_time
from llmtop.storage import queries
from llmtop.storage.db import open_readonly

HISTORY_LIMIT = 500
"""Newest runs listed; older ones stay in the database (``llmtop runs`` lists them all)."""


def load_run_items(db_path: Path | None, limit: int = HISTORY_LIMIT) -> tuple[RunItem, ...]:
    """The newest runs with their key numbers, from a read-only connection (blocking)."""
    db = open_readonly(db_path)
    try:
        items = []
        for r in queries.list_runs(db, limit=limit):
            s = queries.run_summary(db, r.id, with_itl=False)
            o = s.overall if s else None
            items.append(
                RunItem(
                    id=r.id,
                    started=local_time(r.started_at, with_seconds=True),
                    name=r.name,
                    status=r.status,
                    backend=r.backend,
                    model=fmt.model_name(r.model),
                    scenario=r.scenario,
                    requests=r.n_requests,
                    errors=r.n_errors,
                    ttft_p50_ms=o.ttft_ms.p50 if o else None,
                    e2e_p95_ms=o.e2e_ms.p95 if o else None,
                    decode_tps=o.decode_tps.mean if o else None,
                    out_tok_per_s=o.out_tok_per_s if o else None,
                )
            )
        return tuple(items)
    finally:
        db.close()


class RunsScreen(LlmtopScreen[None]):
    """Every recorded run; Enter opens one, Space marks two and ``c`` compares them."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("f5", "reload", "Reload"),
    ]

    def compose(self) -> ComposeResult:
        yield Static("runs", id="runs-title", classes="screen-title")
        yield RunsTable(id="runs-table", classes="panel")
        yield Static("", id="runs-hint", classes="hint")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(RunsTable).border_title = "history [dim]newest first[/]"
        self.query_one("#runs-hint", Static).update(
            "[b]Enter[/] open · [b]Space[/] mark · [b]c[/] compare the two marked "
            "(or this run with the one before) · [b]Esc[/] back"
        )
        self.action_reload()

    def action_reload(self) -> None:
        self.load()

    @work(thread=True, exclusive=True, group="runs", exit_on_error=False)
    def load(self) -> tuple[RunItem, ...]:
        items = load_run_items(self.db_path)
        self.app.call_from_thread(self._show, items)
        return items

    def _show(self, items: tuple[RunItem, ...]) -> None:
        table = self.query_one(RunsTable)
        table.runs = items
        table.border_subtitle = (
            f"{len(items):,} runs" if items else "no runs yet: press l to launch one"
        )
        table.focus()

    @on(RunSelected)
    def open_run(self, event: RunSelected) -> None:
        from llmtop.app.screens.run_detail import RunDetailScreen

        self.app.push_screen(RunDetailScreen(event.run_id))

    @on(CompareRequested)
    def compare(self, event: CompareRequested) -> None:
        from llmtop.app.screens.compare import CompareScreen

        self.app.push_screen(CompareScreen(event.run_a, event.run_b))

    def worker_failed(self, worker: object, message: str) -> None:
        self.query_one(RunsTable).border_subtitle = message
