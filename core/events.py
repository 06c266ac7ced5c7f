"""Every event that flows from collectors to storage and the live aggregator, and nothing else.

Events are frozen, slotted dataclasses (``TokenReceived``, made once per token, a named tuple):
immutable, safe to hand across tasks, threads and processes. All ``t_ns`` values come from
``time.perf_counter_ns()`` (CLOCK_MONOTONIC on Linux, so they compare across processes on one
machine); wall-clock time labels runs only.
Request events are self-contained: ``RequestFinished`` repeats the request's start and first-token
times so a consumer can compute its metrics without remembering earlier events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

ErrorKind = Literal["connect", "timeout", "http_status", "protocol", "cancelled"]
"""Why a request failed: cannot connect, a timeout, an HTTP error status, a response we could
not understand (malformed line, unknown model reported in-stream), or stopped by the user."""

ERROR_KINDS: tuple[str, ...] = ("connect", "timeout", "http_status", "protocol", "cancelled")


@dataclass(frozen=True, slots=True)
class ServerTimings:
    """What the server says about a request (Ollama's final line, OpenAI's ``usage``).

    Kept apart from what we measure on the wire: the difference is itself worth showing.
    Any field the server did not send is ``None``.
    """

    prompt_tokens: int | None = None
    output_tokens: int | None = None
    load_ns: int | None = None
    prompt_eval_ns: int | None = None
    eval_ns: int | None = None
    total_ns: int | None = None
    done_reason: str | None = None


@dataclass(frozen=True, slots=True)
class RequestStarted:
    """A request was written to the socket at ``t_ns`` (the t0 of every metric)."""

    run_id: int
    request_id: int
    t_ns: int
    step: str = ""
    prompt_label: str = ""
    prompt_chars: int = 0
    concurrency: int | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    warmup: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    # Who asked what: set for requests a proxy observed (``llmtop proxy``); for requests llmtop
    # sent itself the run says the model, and ``params["api"]`` the API.
    model: str = ""
    api: str = ""
    """``chat`` or ``generate``."""
    path: str = ""
    """The HTTP path the client asked for (``/api/chat``, ``/v1/completions``)."""
    client: str = ""
    """The client's address, ``host:port``."""
    prompt_hash: str = ""
    """A SHA-256 prefix of the prompt as sent: tells repeated prompts apart without keeping them."""
    prompt: str | None = None
    """The prompt itself (JSON: the messages, or prompt and system), kept only when asked."""
    t_scheduled_ns: int | None = None
    """When an open-loop schedule had it due (``None`` in a closed loop): ``t_ns`` minus this is
    how late it went out (schedule lag)."""


class TokenReceived(NamedTuple):
    """One stream chunk with content arrived at ``t_ns``; it may carry several tokens.

    The one event that is a named tuple, not a frozen dataclass, because it is made once per token:
    measured here a frozen slotted dataclass takes 1.5 us to build and a named tuple 0.6 us; its
    fields are in the order of the ``tokens`` table, so the writer inserts the events themselves;
    and a tuple of ints is untracked by the garbage collector, which would otherwise keep scanning
    the thousands buffered between flushes. Immutable all the same.
    """

    run_id: int
    request_id: int
    index: int  # type: ignore[assignment]  # the field hides tuple.index; nothing calls that
    """0-based index of this content chunk within its request."""
    t_ns: int
    n_tokens: int = 1
    text_len: int = 0
    """Characters of text in the chunk (the text itself is not kept)."""


@dataclass(frozen=True, slots=True)
class RequestFinished:
    """The final chunk arrived at ``t_ns`` (tend); the request succeeded."""

    run_id: int
    request_id: int
    t_ns: int
    t_start_ns: int
    t_first_ns: int | None
    """First content chunk (t1), ``None`` when the answer was empty."""
    t_last_ns: int | None
    """Last content chunk (tN)."""
    chunks: int
    """Content chunks counted on the wire."""
    tokens_counted: int
    """Sum of the chunks' ``n_tokens``: the tokens we saw, whatever the server claims."""
    server: ServerTimings = field(default_factory=ServerTimings)

    @property
    def output_tokens(self) -> int:
        """n of the metric definitions: the server's count when it gives one, else ours."""
        reported = self.server.output_tokens
        return reported if reported is not None else self.tokens_counted


@dataclass(frozen=True, slots=True)
class RequestFailed:
    """The request ended without success at ``t_ns``; what arrived before stays recorded."""

    run_id: int
    request_id: int
    t_ns: int
    error_kind: ErrorKind
    message: str
    t_start_ns: int | None = None
    t_first_ns: int | None = None
    t_last_ns: int | None = None
    chunks: int = 0
    tokens_counted: int = 0
    http_status: int | None = None


@dataclass(frozen=True, slots=True)
class ResourcesSampled:
    """The machine (psutil) at ``t_ns``; the server process fields are ``None`` when unknown."""

    run_id: int | None
    t_ns: int
    cpu_pct: float
    per_core: tuple[float, ...]
    mem_used_bytes: int
    mem_total_bytes: int
    server_rss_bytes: int | None = None
    server_cpu_pct: float | None = None


@dataclass(frozen=True, slots=True)
class GpuSampled:
    """One GPU (NVML) at ``t_ns``; a reading the device does not support is ``None``."""

    run_id: int | None
    t_ns: int
    gpu: int
    name: str = ""
    util_pct: float | None = None
    mem_used_bytes: int | None = None
    mem_total_bytes: int | None = None
    power_w: float | None = None
    temp_c: float | None = None


@dataclass(frozen=True, slots=True)
class ServerSampled:
    """Values read from a server at ``t_ns``: Ollama ``/api/ps`` or Prometheus ``/metrics``.

    ``values`` maps a key (``vllm:num_requests_running``, ``ollama:loaded:<model>:size_vram``)
    to a number.
    """

    run_id: int | None
    t_ns: int
    source: str
    values: dict[str, float]


@dataclass(frozen=True, slots=True)
class ServerIdentified:
    """Which server answers at ``url``: its kind, its version when it tells, and the canonical
    series (core/server_series.py) llmtop reads from it. Sent once a sampler knows, and again
    if the answer changes."""

    run_id: int | None
    t_ns: int
    kind: str
    """``vllm``, ``llama.cpp``, ``sglang``, ``tgi``, ``ollama``, ``llmtop-engine`` or ``metrics``
    (a Prometheus page of no kind llmtop knows)."""
    version: str | None
    url: str
    series: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ClientSampled:
    """llmtop's own process over the last interval: how late its event loop woke (a probe timer,
    recorder/loop_probe.py) and how much CPU it used. ``worker`` is the recording process (0,
    or the worker's number with ``--workers``)."""

    run_id: int | None
    t_ns: int
    worker: int
    loop_lag_ms_p50: float | None
    loop_lag_ms_p99: float | None
    loop_lag_ms_max: float | None
    cpu_pct: float | None
    """The process's CPU over the interval, % of one core (all its threads)."""
    loop_cpu_pct: float | None
    """The event loop's thread alone, % of one core: near 100 it cannot keep up."""


@dataclass(frozen=True, slots=True)
class SourceDown:
    """A server or sampler cannot be read (no NVIDIA driver, server gone): normal, shown as data."""

    run_id: int | None
    t_ns: int
    source: str
    reason: str


Event = (
    RequestStarted
    | TokenReceived
    | RequestFinished
    | RequestFailed
    | ResourcesSampled
    | GpuSampled
    | ServerSampled
    | ServerIdentified
    | ClientSampled
    | SourceDown
)
