"""/metrics for the engine, in Prometheus text with vLLM's metric names where vLLM has one.

A registry of our own (never prometheus-client's global one), so two servers in one process, as
in tests, do not collide. Gauges are read from the scheduler at scrape time (``set_function``);
counters and histograms are fed by the scheduler thread through ``SchedulerObserver``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from llmtop.engine.jobs import Done

# vLLM's buckets, so dashboards built for vLLM read ours the same way.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0)  # fmt: skip
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


@dataclass(frozen=True, slots=True)
class SchedulerGauges:
    """What the scheduler exposes for scrape-time gauges."""

    running: Callable[[], float]
    waiting: Callable[[], float]
    kv_used_fraction: Callable[[], float]
    kv_used_bytes: Callable[[], float]
    kv_capacity_bytes: Callable[[], float]
    batch_size: Callable[[], float]


class EngineMetrics:
    """The engine's metrics for one model; implements the scheduler's observer calls."""

    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        r, labels = self.registry, ["model_name"]
        self.model_name = model_name

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, labels, registry=r)

        self.running = gauge("vllm:num_requests_running", "Requests in the running batch.")
        self.waiting = gauge("vllm:num_requests_waiting", "Requests waiting for a batch slot.")
        self.kv_usage = gauge(
            "vllm:gpu_cache_usage_perc",
            "KV-cache usage: tokens held over tokens preallocated (1 means 100 percent).",
        )
        self.kv_usage_v1 = gauge(
            "vllm:kv_cache_usage_perc",
            "The same KV-cache usage under vLLM V1's name (1 means 100 percent).",
        )
        self.kv_bytes = gauge(
            "llmtop_engine_kv_cache_bytes", "Bytes of KV cache held by running sequences."
        )
        self.kv_capacity = gauge(
            "llmtop_engine_kv_cache_capacity_bytes", "Bytes of KV cache preallocated."
        )
        self.batch_size = gauge(
            "llmtop_engine_batch_size", "Sequences in the last batched decode step."
        )
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Prefilled prompt tokens.", labels, registry=r
        )
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Generated tokens.", labels, registry=r
        )
        self.request_success = Counter(
            "vllm:request_success",
            "Finished requests, by finish reason (stop, length, abort, error).",
            [*labels, "finished_reason"],
            registry=r,
        )
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Arrival at the server to the first token sampled.",
            labels,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "vllm:time_per_output_token_seconds",
            "Time between consecutive tokens of one request.",
            labels,
            buckets=TPOT_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Arrival at the server to the last token.",
            labels,
            buckets=E2E_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "vllm:request_queue_time_seconds",
            "Arrival to the start of prefill: waiting for a batch slot.",
            labels,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.prefill_time = Histogram(
            "vllm:request_prefill_time_seconds",
            "Prefill of one request (all its chunks) up to its first token.",
            labels,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.decode_time = Histogram(
            "vllm:request_decode_time_seconds",
            "First token to last token of one request.",
            labels,
            buckets=E2E_BUCKETS,
            registry=r,
        )
        self.prefix_queries = Counter(
            "vllm:prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache (every prompt token).",
            labels,
            registry=r,
        )
        self.prefix_hits = Counter(
            "vllm:prefix_cache_hits",
            "Prompt tokens found in the prefix cache: copied, not computed.",
            labels,
            registry=r,
        )
        self.http_errors = Counter(
            "llmtop_engine_http_errors",
            "Requests answered with an error status: 400 bad input, 404 unknown model or path, "
            "413 body too large, 503 queue full, 500 a bug.",
            [*labels, "status"],
            registry=r,
        )
        m = model_name
        for status in ("400", "404", "413", "503"):
            self.http_errors.labels(m, status)  # present at 0: a rate needs a starting point
        self._prompt = self.prompt_tokens.labels(m)
        self._prefix_queries = self.prefix_queries.labels(m)
        self._prefix_hits = self.prefix_hits.labels(m)
        self._gen = self.generation_tokens.labels(m)
        self._ttft = self.ttft.labels(m)
        self._tpot = self.tpot.labels(m)
        self._e2e = self.e2e.labels(m)
        for reason in ("stop", "length", "abort", "error"):
            self.request_success.labels(m, reason)  # present at 0 from the first scrape

    def bind(self, g: SchedulerGauges) -> None:
        """Read the scheduler's state at each scrape."""
        m = self.model_name
        self.running.labels(m).set_function(g.running)
        self.waiting.labels(m).set_function(g.waiting)
        self.kv_usage.labels(m).set_function(g.kv_used_fraction)
        self.kv_usage_v1.labels(m).set_function(g.kv_used_fraction)
        self.kv_bytes.labels(m).set_function(g.kv_used_bytes)
        self.kv_capacity.labels(m).set_function(g.kv_capacity_bytes)
        self.batch_size.labels(m).set_function(g.batch_size)

    # --- SchedulerObserver ---------------------------------------------------------------------

    def prefilled(self, prompt_tokens: int, ttft_ns: int, cached_tokens: int = 0) -> None:
        self._prompt.inc(prompt_tokens)
        self._prefix_queries.inc(prompt_tokens)
        self._prefix_hits.inc(cached_tokens)
        self._gen.inc()
        self._ttft.observe(ttft_ns / 1e9)

    def decoded(self, gaps_ns: Sequence[int]) -> None:
        """One decode step gave each running sequence a token, ``gaps_ns`` after its last one."""
        self._gen.inc(len(gaps_ns))
        for gap in gaps_ns:
            self._tpot.observe(gap / 1e9)

    def finished(self, done: Done, e2e_ns: int) -> None:
        """A request ended; the latency histograms count only those that ran to their end."""
        reason = "abort" if done.reason == "cancelled" else done.reason
        self.request_success.labels(self.model_name, reason).inc()
        if done.reason in ("stop", "length"):
            m = self.model_name
            self._e2e.observe(e2e_ns / 1e9)
            self.queue_time.labels(m).observe(done.queue_ns / 1e9)
            self.prefill_time.labels(m).observe(done.prefill_ns / 1e9)
            self.decode_time.labels(m).observe(done.decode_ns / 1e9)

    def http_error(self, status: int) -> None:
        """A response went out with ``status`` >= 400."""
        self.http_errors.labels(self.model_name, str(status)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
