"""One stored run: the same report as ``llmtop report`` (summary per step, the chart that fits
its scenario, the latency histogram, TTFT and TPS over time), drawn for this screen's width."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from rich.console import RenderableType
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.events import Resize
from textual.widgets import Footer, Static

from llmtop.app.report.data import load_report
from llmtop.app.report.document import report_renderables
from llmtop.app.screens.base import LlmtopScreen
from llmtop.app.widgets.report_view import ReportView
from llmtop.storage.db import open_readonly


def build_report(db_path: Path | None, run_id: int, width: int) -> tuple[RenderableType, ...]:
    """Read the run and lay its report out for ``width`` columns (blocking)."""
    db = open_readonly(db_path)
    try:
        data = load_report(db, run_id)
    finally:
        db.close()
    return tuple(report_renderables(data, width))


class RunDetailScreen(LlmtopScreen[None]):
    """A stored run's report; scroll with the keys or the mouse."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back"),
    ]

    def __init__(self, run_id: int) -> None:
        super().__init__()
        self.run_id = run_id
        self._width = 0

    def compose(self) -> ComposeResult:
        yield Static(f"run #{self.run_id}", classes="screen-title")
        with VerticalScroll(id="report-scroll", classes="panel"):
            yield ReportView(id="report")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#report-scroll").focus()

    def on_resize(self, event: Resize) -> None:
        width = self.query_one("#report-scroll").size.width or event.size.width - 4
        if width != self._width:
            self._width = width
            self.load(width)

    @work(thread=True, exclusive=True, group="run-detail", exit_on_error=False)
    def load(self, width: int) -> None:
        items = build_report(self.db_path, self.run_id, width)
        self.app.call_from_thread(self._show, items)

    def _show(self, items: tuple[RenderableType, ...]) -> None:
        self.query_one(ReportView).items = items

    def worker_failed(self, worker: object, message: str) -> None:
        self.query_one(ReportView).placeholder = message
