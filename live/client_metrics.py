"""What a proxy's clients saw, as Prometheus histograms by model (``/llmtop/metrics``).

Folded from the same events that are stored, with core/metrics.py's definitions, so a scrape and
``llmtop report`` of the observed run agree. Each request is observed once, when it ends (ITL
from its chunks' times then), so the per-token cost is one dict lookup and two appends. The
registry is the proxy's own, not prometheus-client's global one: two proxies in one process (the
tests) never share counts.
"""

from __future__ import annotations

from typing import assert_never

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from llmtop.core import metrics
from llmtop.core.events import (
    ClientSampled,
    Event,
    GpuSampled,
    RequestFailed,
    RequestFinished,
    RequestStarted,
    ResourcesSampled,
    ServerIdentified,
    ServerSampled,
    SourceDown,
    TokenReceived,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0,
    7.5, 10.0, 20.0, 30.0, 60.0, 120.0,
)  # fmt: skip
"""TTFT and E2E: from a cached prefix (milliseconds) to a long generation (minutes)."""
TOKEN_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1,
    0.15, 0.2, 0.3, 0.5, 1.0, 2.5,
)  # fmt: skip
"""TPOT and ITL: vLLM's buckets for its own per-token histograms, so the two line up."""
OUTPUT_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


class _Model:
    """One model's labelled children (a ``labels()`` lookup costs microseconds: done once)."""

    __slots__ = ("e2e", "in_flight", "itl", "name", "output_tokens", "tpot", "ttft")

    def __init__(self, m: ClientMetrics, model: str) -> None:
        self.name = model
        self.ttft = m.ttft.labels(model)
        self.e2e = m.e2e.labels(model)
        self.tpot = m.tpot.labels(model)
        self.itl = m.itl.labels(model)
        self.output_tokens = m.output_tokens.labels(model)
        self.in_flight = m.in_flight.labels(model)


class _Open:
    __slots__ = ("counts", "model", "times")

    def __init__(self, model: _Model) -> None:
        self.model = model
        self.times: list[int] = []
        self.counts: list[int] = []


class ClientMetrics:
    """Prometheus histograms of the observed requests; ``add`` every event, ``render`` a scrape."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, ["model"], buckets=buckets, registry=r)

        self.ttft = hist("llmtop_proxy_ttft_seconds", "Time to first token as the proxy's clients saw it", LATENCY_BUCKETS_S)  # fmt: skip
        self.e2e = hist("llmtop_proxy_e2e_seconds", "Request end-to-end latency (request written upstream to final chunk)", LATENCY_BUCKETS_S)  # fmt: skip
        self.tpot = hist("llmtop_proxy_tpot_seconds", "Time per output token after the first", TOKEN_BUCKETS_S)  # fmt: skip
        self.itl = hist("llmtop_proxy_itl_seconds", "Inter-token latency (a chunk of k tokens counts k gaps of 1/k)", TOKEN_BUCKETS_S)  # fmt: skip
        self.output_tokens = hist("llmtop_proxy_output_tokens", "Output tokens per request", OUTPUT_TOKEN_BUCKETS)  # fmt: skip
        self.requests = Counter("llmtop_proxy_requests", "Generation requests ended, by status (ok, error, cancelled)", ["model", "status"], registry=r)  # fmt: skip
        self.errors = Counter("llmtop_proxy_errors", "Failed generation requests by error kind", ["model", "kind"], registry=r)  # fmt: skip
        self.in_flight = Gauge("llmtop_proxy_requests_in_flight", "Generation requests being relayed now", ["model"], registry=r)  # fmt: skip
        self._open: dict[int, _Open] = {}
        self._models: dict[str, _Model] = {}

    def _model(self, name: str) -> _Model:
        m = self._models.get(name)
        if m is None:
            m = self._models[name] = _Model(self, name)
        return m

    def add(self, ev: Event) -> None:
        """Fold one event (cheap for tokens; the histograms move when a request ends)."""
        match ev:
            case TokenReceived():
                o = self._open.get(ev.request_id)
                if o is not None:
                    o.times.append(ev.t_ns)
                    o.counts.append(ev.n_tokens)
            case RequestStarted():
                model = self._model(ev.model)
                self._open[ev.request_id] = _Open(model)
                model.in_flight.inc()
            case RequestFinished():
                o = self._open.pop(ev.request_id, None)
                c = o.model if o else self._model("")
                if o is not None:
                    c.in_flight.dec()
                m = metrics.request_metrics(ev)
                self.requests.labels(c.name, "ok").inc()
                c.e2e.observe(m.e2e_ms / 1000)
                c.output_tokens.observe(m.output_tokens)
                if m.ttft_ms is not None:
                    c.ttft.observe(m.ttft_ms / 1000)
                if m.tpot_ms is not None:
                    c.tpot.observe(m.tpot_ms / 1000)
                if o is not None:
                    observe = c.itl.observe
                    for gap_ms in metrics.itl_ms(o.times, o.counts, m.output_tokens):
                        observe(gap_ms / 1000)
            case RequestFailed():
                o = self._open.pop(ev.request_id, None)
                c = o.model if o else self._model("")
                if o is not None:
                    c.in_flight.dec()
                status = "cancelled" if ev.error_kind == "cancelled" else "error"
                self.requests.labels(c.name, status).inc()
                self.errors.labels(c.name, ev.error_kind).inc()
            case (
                ResourcesSampled()
                | GpuSampled()
                | ServerSampled()
                | ServerIdentified()
                | ClientSampled()
                | SourceDown()
            ):
                pass
            case _:
                assert_never(ev)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
