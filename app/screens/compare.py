"""Two stored runs side by side: each metric, its change, and whether the change is beyond
run-to-run noise (the same comparison as ``llmtop compare``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from rich.console import RenderableType
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import Footer, Static

from llmtop.app.report.compare import load_comparison
from llmtop.app.report.compare_view import comparison_renderables
from llmtop.app.screens.base import LlmtopScreen
from llmtop.app.widgets.report_view import ReportView
from llmtop.storage.db import open_readonly


def build_comparison(db_path: Path | None, run_a: int, run_b: int) -> tuple[RenderableType, ...]:
    """Read both runs and compare ``run_b`` against the baseline ``run_a`` (blocking)."""
    db = open_readonly(db_path)
    try:
        comparison = load_comparison(db, [run_a, run_b])
    finally:
        db.close()
    return tuple(comparison_renderables([comparison]))


class CompareScreen(LlmtopScreen[None]):
    """Run B against run A: lower is better for latencies, higher for throughput."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("x", "swap", "Swap A/B"),
    ]

    def __init__(self, run_a: int, run_b: int) -> None:
        super().__init__()
        self.run_a, self.run_b = run_a, run_b

    def compose(self) -> ComposeResult:
        yield Static("", id="compare-title", classes="screen-title")
        with VerticalScroll(id="compare-scroll", classes="panel"):
            yield ReportView(id="comparison")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#compare-scroll").focus()
        self._reload()

    def _reload(self) -> None:
        self.query_one("#compare-title", Static).update(
            f"compare  run #{self.run_b} against baseline #{self.run_a}"
        )
        self.query_one(ReportView).items = ()
        self.load(self.run_a, self.run_b)

    def action_swap(self) -> None:
        self.run_a, self.run_b = self.run_b, self.run_a
        self._reload()

    @work(thread=True, exclusive=True, group="compare", exit_on_error=False)
    def load(self, run_a: int, run_b: int) -> None:
        items = build_comparison(self.db_path, run_a, run_b)
        self.app.call_from_thread(self._show, items)

    def _show(self, items: tuple[RenderableType, ...]) -> None:
        self.query_one(ReportView).items = items

    def worker_failed(self, worker: object, message: str) -> None:
        self.query_one(ReportView).placeholder = message
