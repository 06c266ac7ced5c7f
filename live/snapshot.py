"""What the live aggregator hands the UI: an immutable ``Snapshot`` of frozen dataclasses and
tuples, so assigning a new one to a reactive always means "changed" and nothing is mutated in
place. Built by live/aggregate.py; read by the dashboard's widgets."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmtop.core.metrics import EMPTY_STATS, Slo, Stats
from llmtop.core.self_check import ClientCheck


@dataclass(frozen=True, slots=True)
class LiveRequest:
    """One request as the requests panel shows it, in flight or finished."""

    request_id: int
    step: str
    prompt_label: str
    prompt_chars: int
    warmup: bool
    status: str
    """``running``, ``ok``, ``error`` or ``cancelled``."""
    t_start_ns: int
    tokens: int
    """Output tokens so far (the server's count once finished, when it gives one)."""
    ttft_ms: float | None
    e2e_ms: float | None
    """``None`` while running."""
    decode_tps: float | None
    """So far, while running."""
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RunTable:
    """The percentile table of the current run: measured requests only, as in storage/queries."""

    ttft_ms: Stats = EMPTY_STATS
    tpot_ms: Stats = EMPTY_STATS
    e2e_ms: Stats = EMPTY_STATS
    decode_tps: Stats = EMPTY_STATS
    ok: int = 0
    errors: int = 0
    cancelled: int = 0
    warmup: int = 0
    output_tokens: int = 0
    req_per_s: float | None = None
    out_tok_per_s: float | None = None
    error_rate: float | None = None
    goodput: float | None = None
    goodput_recent: float | None = None
    """Goodput of the requests that ended in the last minute (``RECENT_NS``): whether the SLOs
    hold now, where ``goodput`` says whether they held over the whole run."""
    slo: Slo = field(default_factory=Slo)


@dataclass(frozen=True, slots=True)
class Resources:
    """The machine and the server process at the newest sample, with their recent series."""

    t_ns: int
    cpu_pct: float
    per_core: tuple[float, ...]
    mem_used_bytes: int
    mem_total_bytes: int
    server_rss_bytes: int | None
    server_cpu_pct: float | None
    cpu_series: tuple[float, ...]
    mem_series: tuple[float, ...]
    """Memory used, bytes."""
    server_rss_series: tuple[float, ...]
    server_cpu_series: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Gpu:
    """One GPU at its newest sample; a reading the device does not give is ``None``."""

    gpu: int
    name: str
    util_pct: float | None
    mem_used_bytes: int | None
    mem_total_bytes: int | None
    power_w: float | None
    temp_c: float | None
    util_series: tuple[float, ...]
    mem_series: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model the server holds in memory (Ollama ``/api/ps``)."""

    name: str
    size_bytes: float | None
    vram_bytes: float | None


@dataclass(frozen=True, slots=True)
class ServerView:
    """What one server source says about itself, watched even when nobody here drives it.

    Rates and means cover the newest scrape interval (a histogram mean: the newest interval in
    which requests ended); shares and preemptions count since the source was first seen.
    """

    source: str
    """The server's kind (``vllm``, ``llama.cpp``, ...), or ``ollama`` for ``/api/ps``."""
    t_ns: int
    models: tuple[LoadedModel, ...] = ()
    version: str | None = None
    running: float | None = None
    """Requests the server is running (Prometheus ``num_requests_running``)."""
    waiting: float | None = None
    kv_cache_pct: float | None = None
    """KV-cache use, 0..100."""
    generation_tps: float | None = None
    """Tokens the server generated per second, for every client."""
    prompt_tps: float | None = None
    prefix_cache_hit_rate: float | None = None
    """Share of prompt tokens taken from the prefix cache, 0..1."""
    preemptions: float | None = None
    means_ms: tuple[tuple[str, float], ...] = ()
    """``(canonical histogram, mean ms)``: ``ttft_s``, ``tpot_s``, ``queue_s``, ``prefill_s``..."""
    running_series: tuple[float, ...] = ()
    waiting_series: tuple[float, ...] = ()
    kv_cache_series: tuple[float, ...] = ()
    generation_tps_series: tuple[float, ...] = ()
    values: tuple[tuple[str, float], ...] = ()
    """Every value of the newest sample, sorted by key."""

    def mean_ms(self, name: str) -> float | None:
        """The server's own mean of one histogram (``ttft_s``), ms."""
        return dict(self.means_ms).get(name)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the dashboard draws, at one instant; replaced, never changed."""

    version: int = 0
    """Counts the folds: a new number means new data."""
    events: int = 0
    run_id: int | None = None
    step: str = ""
    """Step of the newest request started."""
    t_ns: int | None = None
    """The newest event's time."""
    ttft_series: tuple[float, ...] = ()
    """TTFT (ms) of each request that finished in the window, oldest first."""
    tps_series: tuple[float, ...] = ()
    """Decode tokens/s of each request that finished in the window, oldest first."""
    ttft_window: Stats = EMPTY_STATS
    tps_window: Stats = EMPTY_STATS
    e2e_values: tuple[float, ...] = ()
    """E2E latencies (ms) of the run's newest measured requests, for the histogram."""
    itl_values: tuple[float, ...] = ()
    """ITL samples (ms) of the run's newest measured requests, for the histogram."""
    itl_window: Stats = EMPTY_STATS
    table: RunTable = field(default_factory=RunTable)
    resources: Resources | None = None
    gpus: tuple[Gpu, ...] = ()
    servers: tuple[ServerView, ...] = ()
    down: tuple[tuple[str, str], ...] = ()
    """``(source, reason)`` of every source that cannot be read right now."""
    in_flight: tuple[LiveRequest, ...] = ()
    """Oldest first."""
    finished: tuple[LiveRequest, ...] = ()
    """Newest first."""
    client: ClientCheck | None = None
    """llmtop itself over the last few seconds (loop lag, CPU), while a run goes."""
    bottleneck: str | None = None
    """Why llmtop itself may be moving this run's numbers now (core/self_check.py), or ``None``."""


EMPTY_SNAPSHOT = Snapshot()
