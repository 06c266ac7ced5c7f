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

from typing import Protocol

from llmtop.core.requests import Emit, GenerationRequest


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
