"""What passes between the HTTP handlers and the scheduler thread: one job in, its pieces out.

A handler turns an API request into a ``Job`` (token ids and ``SamplingParams``), submits it, and
reads a ``JobHandle``: ``Piece`` after ``Piece``, then one ``Done``. The scheduler thread writes
into the handle with ``loop.call_soon_threadsafe``; the handler cancels it when its client goes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "cancelled", "error"]
"""``stop``: end-of-sequence token or a stop string; ``length``: max tokens or the context is full;
``cancelled``: the client went away (or the server is shutting down); ``error``: the engine failed."""


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick tokens and when to stop, as the API request asked (already validated)."""

    max_tokens: int | None = None
    """``None``: until end-of-sequence or the context is full."""
    temperature: float = 0.8
    """0 means greedy (argmax)."""
    top_k: int = 0
    """0 means off."""
    top_p: float = 1.0
    seed: int | None = None
    """A seed makes sampling reproducible: each job has its own generator."""
    stop: tuple[str, ...] = ()
    repetition_penalty: float = 1.0
    """Ollama's ``repeat_penalty``; 1 is off."""
    logprobs: int | None = None
    """Report each token's log-probability and this many top alternatives; ``None``: off."""
    ignore_eos: bool = False
    """Go on past end-of-sequence tokens until ``max_tokens`` (vLLM's and llama-server's
    extension: benchmarks ask for it so that every request makes the same number of tokens)."""

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0 and self.repetition_penalty == 1.0


@dataclass(slots=True)
class Job:
    """One generation: prompt token ids in, text out, with the engine's own clock."""

    prompt_ids: list[int]
    params: SamplingParams
    arrival_ns: int = field(default_factory=time.perf_counter_ns)
    """perf_counter_ns when the request reached the server: queue time counts from here."""


@dataclass(frozen=True, slots=True)
class Piece:
    """Text produced by one decode step of one job (may be empty while a character is split
    across tokens, or while text that could start a stop string is held back)."""

    text: str
    token_id: int
    t_ns: int
    """perf_counter_ns when the token was sampled."""
    logprob: float | None = None
    """log p(token) under the model (before temperature), when the job asked for logprobs."""
    top: tuple[tuple[int, float], ...] = ()
    """The most likely tokens and their log-probabilities, most likely first."""


@dataclass(frozen=True, slots=True)
class Done:
    """The end of a job, with counts and the engine's durations (ns), as Ollama reports them."""

    reason: FinishReason
    prompt_tokens: int
    output_tokens: int
    queue_ns: int
    """Arrival to the start of prefill: waiting for a slot in the batch (Ollama's load_duration)."""
    prefill_ns: int
    """The prefill forward and the first token (Ollama's prompt_eval_duration)."""
    decode_ns: int
    """First token to the last one (Ollama's eval_duration)."""
    total_ns: int
    """Arrival to the end."""
    output_ids: tuple[int, ...] = ()
    message: str = ""
    """For ``error`` and ``cancelled``: what happened."""


Event = Piece | Done


class JobHandle:
    """The handler's side of a submitted job: an async iterator of pieces, and ``cancel()``.

    Only the scheduler thread writes (through ``deliver`` on the loop); only the handler reads.
    """

    def __init__(self, job: Job, loop: asyncio.AbstractEventLoop) -> None:
        self.job = job
        self.loop = loop
        self.cancelled = False
        """Set from the loop thread, read by the scheduler thread between steps (a plain bool:
        one reader, one writer, and a step's delay is all that is at stake)."""
        self.done: Done | None = None
        self._queue: asyncio.Queue[Event] = asyncio.Queue()

    def cancel(self) -> None:
        """Stop the job: it leaves the batch before the next decode step."""
        self.cancelled = True

    def deliver(self, event: Event) -> None:
        """Called on the loop thread (via call_soon_threadsafe) by the scheduler."""
        if isinstance(event, Done):
            self.done = event
        self._queue.put_nowait(event)

    async def events(self) -> AsyncIterator[Event]:
        """Pieces as they come, then the ``Done``; cancels the job if the reader stops early."""
        try:
            while True:
                event = await self._queue.get()
                yield event
                if isinstance(event, Done):
                    return
        finally:
            if self.done is None:
                self.cancel()
