"""What a recording is asked to do (``RecordPlan``) and how it ended (``RecordResult``).

Kept apart from the recording itself so the dashboard's launcher and ``record``'s flags can
build a plan without pulling in the machinery that runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llmtop.collectors.base import Backend
from llmtop.collectors.system import DEFAULT_HZ
from llmtop.core.requests import StatusSink, Timeouts, no_status
from llmtop.scenarios.model import Scenario

FailureKind = Literal["source", "usage", "storage", "requests"]


@dataclass(frozen=True, slots=True)
class RecordPlan:
    """Everything a run needs: what to send (the scenario, flags applied) and where."""

    scenario: Scenario
    backend: str = "auto"
    """``auto``, ``ollama``, ``openai`` or ``engine`` (collectors/backends.py decides)."""
    url: str | None = None
    model: str | None = None
    """``None``: the server's only model (a server with several needs ``--model``)."""
    api_key_env: str | None = None
    """The environment variable holding the OpenAI API key; the key itself is never stored."""
    name: str = ""
    store_tokens: bool = True
    sample_hz: float | None = None
    """``None``: the scenario's rate, else 2 Hz."""
    timeouts: Timeouts = field(default_factory=Timeouts)
    server_pid: int | None = None
    """The server's pid when it cannot be found by its port (another user's process)."""
    sample_gpu: bool = True
    sample_server: bool = True
    flags: dict[str, Any] = field(default_factory=dict)
    """The command-line flags given, stored in ``params_json`` as they are."""
    workers: int = 1
    """Processes that send the requests (``--workers``; 1: the recording's own loop)."""

    @property
    def hz(self) -> float:
        return self.sample_hz or self.scenario.sample_hz or DEFAULT_HZ


@dataclass(frozen=True, slots=True)
class RecordResult:
    """How a run ended; its statistics are in the database (storage.queries.run_summary)."""

    run_id: int | None
    status: str
    """``finished``, ``cancelled`` or ``failed``."""
    db_path: Path
    error: str | None = None
    failure: FailureKind | None = None
    backend: str = ""
    base_url: str = ""
    model: str = ""
    steps_run: tuple[str, ...] = ()
    stopped_early: str | None = None
    """Why later steps were skipped (the SLOs broke), or ``None``."""
    sent: int = 0
    ok: int = 0
    errors: int = 0
    cancelled: int = 0


BackendFactory = Callable[[RecordPlan, StatusSink], Backend]
"""Makes the backend of a plan; the sink hears what its start waits for."""


def default_backend_factory(plan: RecordPlan, on_status: StatusSink = no_status) -> Backend:
    """The backend of ``plan`` through collectors/backends.py (``auto`` and ``engine`` too)."""
    from llmtop.collectors.backends import make_backend

    return make_backend(
        plan.backend,
        plan.url,
        api_key_env=plan.api_key_env,
        timeouts=plan.timeouts,
        model=plan.model,
        on_status=on_status,
    )
