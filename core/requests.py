"""What one request asks of a server (``GenerationRequest``), how long it may take
(``Timeouts``), and where its events go (``Emit``): the vocabulary shared by the scenarios that
describe requests, the recorder that sends them and the backends that stream them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from llmtop.core.events import Event

Emit = Callable[[Event], None]
"""Where a backend or sampler sends its events (the recorder fans them out to storage and the
live tally)."""

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
    messages: tuple[tuple[str, str], ...] = ()
    """A whole conversation, ``(role, content)`` each, sent as it is instead of ``system`` and
    ``prompt`` (a replayed chat); chat API only."""
    t_scheduled_ns: int | None = None
    """When an open-loop schedule has it due (``perf_counter_ns``); ``None`` in a closed loop."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long a request may take, in seconds: each finite, so nothing hangs forever."""

    connect_s: float = 5.0
    first_token_s: float = 300.0
    """A model may think (or load) for a while before its first token."""
    between_chunks_s: float = 60.0
    total_s: float | None = None


class StatusSink(Protocol):
    """Where a long wait says what it waits for (starting the engine, loading the model...).

    ``notice=True`` marks a fact the user should keep even without a terminal (``auto`` chose
    the bundled engine); the rest is progress, shown while it is current and then replaced.
    """

    def __call__(self, text: str, *, notice: bool = False) -> None: ...


def no_status(text: str, *, notice: bool = False) -> None:
    """A ``StatusSink`` that shows nothing."""
