"""What every llmtop screen shares: the one place a failed worker becomes a notification."""

from __future__ import annotations

from pathlib import Path
from typing import Generic, TypeVar

from textual.screen import Screen
from textual.worker import Worker, WorkerState

ResultType = TypeVar("ResultType")


class LlmtopScreen(Screen[ResultType], Generic[ResultType]):
    """A screen whose workers (storage queries, server calls) report errors, never crash."""

    @property
    def db_path(self) -> Path | None:
        """The database the app was opened on (``--db``, ``LLMTOP_DB`` or the default)."""
        return getattr(getattr(self.app, "config", None), "db_path", None)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """Turn a worker's exception into one notification and tell the screen."""
        if event.state is WorkerState.ERROR and event.worker.error is not None:
            message = str(event.worker.error) or type(event.worker.error).__name__
            self.notify(message, severity="error", timeout=8)
            self.worker_failed(event.worker, message)

    def worker_failed(self, worker: Worker[object], message: str) -> None:
        """Show a failure in place (a placeholder, a field); the default does nothing more."""
