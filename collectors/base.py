"""The contract between the scenario runner and the backends that stream one request each.

A backend sends one ``GenerationRequest`` and reports what happened as events through a
synchronous ``emit`` callback: ``RequestStarted`` (when the request has been written), one
``TokenReceived`` per content chunk, then exactly one ``RequestFinished`` or ``RequestFailed``.
A callback rather than an async iterator because it is called once per chunk, tens of thousands
of times a second: a plain call costs a fraction of an async-generator round trip.

Request-level failures (refused connection, HTTP 404/500, a malformed line, a cut stream, a
timeout) are reported as ``RequestFailed`` and never raised; only cancellation propagates, after
a ``RequestFailed(error_kind="cancelled")`` has been emitted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from llmtop.collectors.events import Event

Emit = Callable[[Event], None]
"""Where a backend sends its events (the runner fans them out to storage and the aggregator)."""

Api = Literal["chat", "generate"]
"""``chat``: /api/chat or /v1/chat/completions with ``messages``; ``generate``: /api/generate or
/v1/completions with a raw ``prompt``."""


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One request as the runner asks for it; the backend maps it onto its server's API."""

    run_id: int
    request_id: int
    model: str
    prompt: str
    api: Api = "chat"
    system: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # Labels carried into RequestStarted, for storage and statistics:
    step: str = ""
    prompt_label: str = ""
    concurrency: int | None = None
    warmup: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    """Backend-specific options passed through as they are (e.g. Ollama ``num_ctx``)."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long a request may take, in seconds: each finite, so nothing hangs forever."""

    connect_s: float = 5.0
    first_token_s: float = 300.0
    """A model may think (or load) for a while before its first token."""
    between_chunks_s: float = 60.0
    total_s: float | None = None


class Backend(Protocol):
    """A server API that llmtop can drive. Used as an async context manager that owns one
    shared HTTP client (pooled, keep-alive) for the whole run."""

    name: str
    """``ollama``, ``openai`` or ``engine``."""
    base_url: str

    async def __aenter__(self) -> Backend: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def stream(self, req: GenerationRequest, emit: Emit) -> None:
        """Send ``req`` and emit its events; see the module docstring for the rules."""
        ...

    async def list_models(self) -> list[str]:
        """Model names the server offers; raises ``SourceError`` when it cannot be reached."""
        ...

    async def check(self, model: str | None) -> None:
        """Raise ``SourceError`` (one clear line naming the URL) when the server is unreachable
        or does not have ``model``; return quietly when a run can start."""
        ...
