"""The dashboard's first line: what is measured (backend, URL, model), which run and step,
for how long, in what state, and what the server says it is doing (even with no run of ours)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual.app import RenderResult
from textual.reactive import reactive
from textual.widget import Widget

from llmtop.core import fmt

STATES = (
    "idle",
    "starting",
    "running",
    "observing",
    "stopping",
    "finished",
    "cancelled",
    "failed",
    "interrupted",
)


@dataclass(frozen=True, slots=True)
class RunStatus:
    """Everything the status line shows; the screen builds a new one when any part changes."""

    backend: str = ""
    url: str = ""
    model: str = ""
    state: str = "idle"
    """One of ``STATES``."""
    run_id: int | None = None
    run_name: str = ""
    scenario: str = ""
    step: str = ""
    step_index: int | None = None
    """1-based position of ``step`` in the scenario, when known."""
    step_count: int | None = None
    elapsed_s: float | None = None
    done: int = 0
    """Requests finished so far in this run."""
    waiting: str = ""
    """What a starting run waits for (starting the engine, loading the model), or ""."""


class StatusLine(Widget):
    """One line; the state on the left in its colour, the server on the right."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "status-line--brand",
        "status-line--muted",
        "status-line--value",
        *(f"status-line--{s}" for s in STATES),
    }
    DEFAULT_CSS = """
    StatusLine { height: 1; }
    """

    status: reactive[RunStatus] = reactive(RunStatus)
    server: reactive[str] = reactive("")
    """What the server says it is doing (``llama.cpp · 4 running · 157 tok/s``), from its own
    metrics: shown even when llmtop sends nothing."""

    def render(self) -> RenderResult:
        s = self.status
        style = self.get_component_rich_style
        muted, value = style("status-line--muted"), style("status-line--value")
        left = Text.assemble(
            (" llmtop ", style("status-line--brand")),
            " ",
            (
                f"● {s.state}",
                style(f"status-line--{s.state}" if s.state in STATES else "status-line--idle"),
            ),
        )
        if s.waiting:
            left.append(f"  {s.waiting}", muted)
        if s.run_id is not None:
            left.append("  run ", muted)
            left.append(f"#{s.run_id}", value)
            if s.run_name:
                left.append(f" {s.run_name}", value)
        if s.scenario:
            left.append("  ", muted)
            left.append(s.scenario, value)
        if s.step:
            left.append("  step ", muted)
            if s.step_index is not None and s.step_count:
                left.append(f"{s.step_index}/{s.step_count} ", muted)
            left.append(s.step, value)
        if s.elapsed_s is not None:
            left.append("  ", muted)
            left.append(fmt.clock(s.elapsed_s), value)
        if s.run_id is not None:
            left.append(f"  {s.done:,} done", muted)
        width = self.size.width
        model = fmt.model_name(s.model)
        server = Text.assemble(("  server ", muted), (self.server, value)) if self.server else None
        # Drop the URL first, then the backend, then the server's activity, when the line is
        # short; never the model.
        for parts, with_server in (
            ((s.backend, s.url, model), True),
            ((s.backend, "", model), True),
            (("", "", model), True),
            (("", "", model), False),
        ):
            right = Text(" ")
            for i, part in enumerate(parts):
                if part:
                    right.append(part, muted if i == 1 else value)
                    right.append("  ")
            extra = server.cell_len if server is not None and with_server else 0
            if left.cell_len + extra + right.cell_len + 1 <= width:
                break
        if server is not None and with_server:
            left.append_text(server)
        room = width - left.cell_len - right.cell_len
        return Text.assemble(left, " " * max(1, room), right, no_wrap=True, overflow="ellipsis")
