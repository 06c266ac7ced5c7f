"""The servers' own metric series that llmtop understands: one table per server kind (vLLM,
llama.cpp, SGLang, TGI, Ollama, ``llmtop serve``), each mapping its exposition names, old and
new, onto one canonical name that means the same thing on every server.

Shared vocabulary: the server sampler keeps only these series, and the live aggregator, storage
and reports read them under their canonical names. A server renames a series between versions
(vLLM 0.32: ``vllm:request_time_per_output_token_seconds``, ``vllm:kv_cache_usage_perc``; llama.cpp
dropped ``kv_cache_usage_ratio``): add the new name in front of the old one, first found wins.

Canonical names (counters end in ``_total``; histograms are in seconds and give
``<name>:count``, ``<name>:sum`` and, over one scrape interval, ``<name>:mean``):

======================================  ===========================================================
``requests_running``                    requests the server is working on
``requests_waiting``                    requests queued (vLLM waiting, llama.cpp deferred)
``kv_cache_usage``                      share of the KV cache in use, 0..1
``kv_cache_tokens``                     tokens held in the KV cache (old llama.cpp)
``prompt_tokens_total``                 prompt tokens of the requests, **cached ones included**
                                        (llama.cpp counts only computed ones: its computed and
                                        cached counters are added)
``cached_prompt_tokens_total``          of those, tokens taken from the prefix cache
``generation_tokens_total``             output tokens generated
``preemptions_total``                   requests preempted (their KV cache dropped, recomputed)
``requests_finished_total``             requests the server finished successfully
``requests_received_total``             requests the server took in (TGI)
``prompt_seconds_total``                time spent on prompts, summed over requests (llama.cpp)
``generation_seconds_total``            time spent generating, summed over requests (llama.cpp)
``busy_slots_per_decode``               mean busy slots per decode call: the batch (llama.cpp)
``ttft_s`` ``tpot_s`` ``itl_s``         histograms: time to first token, time per output token
``e2e_s`` ``queue_s`` ``prefill_s``     (per request), inter-token latency, end to end, queued,
``decode_s``                            prefill and decode phases
======================================  ===========================================================

Percentiles are not taken from histograms: Prometheus buckets are coarse (vLLM's queue-time
p50 read 0.15 s while its mean was 10 µs), so llmtop keeps only counts and sums, and means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SeriesType = Literal["gauge", "counter", "histogram"]


@dataclass(frozen=True, slots=True)
class Series:
    """One quantity on one kind of server."""

    name: str
    """Canonical name (``generation_tokens_total``, ``ttft_s``)."""
    raw: tuple[str, ...]
    """Exposition names, newest first; the first one present is read. A histogram's name is
    its family name; a counter's is its sample name (``..._total``)."""
    type: SeriesType
    add: bool = False
    """The raw series are added rather than alternatives (all must be present)."""


@dataclass(frozen=True, slots=True)
class ServerKind:
    """What llmtop knows of one kind of server."""

    kind: str
    """``vllm``, ``llama.cpp``, ``sglang``, ``tgi``, ``ollama`` or ``llmtop-engine``."""
    series: tuple[Series, ...]
    version_path: str | None
    """Where the server tells its version (a JSON document), from its root."""
    version_keys: tuple[str, ...]
    """Keys of that document that hold the version, first found wins."""
    metrics_flag: str | None
    """How metrics are turned on when ``/metrics`` is off (``None``: always on, or none)."""


def _g(name: str, *raw: str) -> Series:
    return Series(name, raw, "gauge")


def _c(name: str, *raw: str) -> Series:
    return Series(name, raw, "counter")


def _h(name: str, *raw: str) -> Series:
    return Series(name, raw, "histogram")


_VLLM_SERIES: tuple[Series, ...] = (
    _g("requests_running", "vllm:num_requests_running"),
    _g("requests_waiting", "vllm:num_requests_waiting"),
    _g("kv_cache_usage", "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    _c("prompt_tokens_total", "vllm:prompt_tokens_total"),
    _c("cached_prompt_tokens_total", "vllm:prompt_tokens_cached_total",
       "vllm:prefix_cache_hits_total"),
    _c("generation_tokens_total", "vllm:generation_tokens_total"),
    _c("preemptions_total", "vllm:num_preemptions_total"),
    _c("requests_finished_total", "vllm:request_success_total"),
    _h("ttft_s", "vllm:time_to_first_token_seconds"),
    _h("tpot_s", "vllm:request_time_per_output_token_seconds",
       "vllm:time_per_output_token_seconds"),
    _h("itl_s", "vllm:inter_token_latency_seconds"),
    _h("e2e_s", "vllm:e2e_request_latency_seconds"),
    _h("queue_s", "vllm:request_queue_time_seconds"),
    _h("prefill_s", "vllm:request_prefill_time_seconds"),
    _h("decode_s", "vllm:request_decode_time_seconds"),
)  # fmt: skip

KINDS: dict[str, ServerKind] = {
    k.kind: k
    for k in (
        ServerKind("vllm", _VLLM_SERIES, "/version", ("version",), None),
        ServerKind(
            "llmtop-engine",
            _VLLM_SERIES,  # `llmtop serve` speaks vLLM's names, and its own llmtop_* beside them
            "/api/version",
            ("version",),
            None,
        ),
        ServerKind(
            "llama.cpp",
            (
                _g("requests_running", "llamacpp:requests_processing"),
                _g("requests_waiting", "llamacpp:requests_deferred"),
                _g("kv_cache_usage", "llamacpp:kv_cache_usage_ratio"),
                _g("kv_cache_tokens", "llamacpp:kv_cache_tokens"),
                Series(
                    "prompt_tokens_total",
                    ("llamacpp:prompt_tokens_total", "llamacpp:prompt_tokens_cached_total"),
                    "counter",
                    add=True,
                ),
                _c("cached_prompt_tokens_total", "llamacpp:prompt_tokens_cached_total"),
                _c("generation_tokens_total", "llamacpp:tokens_predicted_total"),
                _c("prompt_seconds_total", "llamacpp:prompt_seconds_total"),
                _c("generation_seconds_total", "llamacpp:tokens_predicted_seconds_total"),
                _g("busy_slots_per_decode", "llamacpp:n_busy_slots_per_decode"),
            ),
            "/props",
            ("build_info", "version"),
            "start llama-server with --metrics",
        ),
        ServerKind(
            "sglang",
            (
                _g("requests_running", "sglang:num_running_reqs"),
                _g("requests_waiting", "sglang:num_queue_reqs"),
                _g("kv_cache_usage", "sglang:token_usage"),
                _c("prompt_tokens_total", "sglang:prompt_tokens_total"),
                _c("cached_prompt_tokens_total", "sglang:cached_tokens_total"),
                _c("generation_tokens_total", "sglang:generation_tokens_total"),
                _c("requests_finished_total", "sglang:num_requests_total"),
                _h("ttft_s", "sglang:time_to_first_token_seconds"),
                _h("tpot_s", "sglang:time_per_output_token_seconds"),
                _h("itl_s", "sglang:inter_token_latency_seconds"),
                _h("e2e_s", "sglang:e2e_request_latency_seconds"),
                _h("queue_s", "sglang:queue_time_seconds"),
            ),
            "/get_server_info",
            ("version",),
            "start SGLang with --enable-metrics",
        ),
        ServerKind(
            "tgi",
            (
                _g("requests_running", "tgi_batch_current_size"),
                _g("requests_waiting", "tgi_queue_size"),
                # TGI counts tokens only in per-request histograms: their sums are the totals
                _c("prompt_tokens_total", "tgi_request_input_length:sum"),
                _c("generation_tokens_total", "tgi_request_generated_tokens:sum"),
                _c("requests_finished_total", "tgi_request_success_total"),
                _c("requests_received_total", "tgi_request_count_total"),
                _h("tpot_s", "tgi_request_mean_time_per_token_duration"),
                _h("e2e_s", "tgi_request_duration"),
                _h("queue_s", "tgi_request_queue_duration"),
                _h("tgi_input_tokens", "tgi_request_input_length"),
                _h("tgi_generated_tokens", "tgi_request_generated_tokens"),
            ),
            "/info",
            ("version",),
            None,
        ),
        ServerKind("ollama", (), "/api/version", ("version",), None),
    )
}
"""Every server kind llmtop knows, by name."""

KIND_ALIASES: dict[str, str] = {"llamacpp": "llama.cpp", "llmtop": "llmtop-engine"}
"""Kind names older llmtop versions stored (``server_samples.source``)."""

OWN_PREFIXES = ("llmtop_", "llmtop:")
"""``llmtop serve``'s own metrics: all kept."""

_PREFIX_KIND: tuple[tuple[str, str], ...] = (
    ("vllm:", "vllm"), ("sglang:", "sglang"), ("tgi_", "tgi"), ("llamacpp:", "llama.cpp"),
)  # fmt: skip

KNOWN_SAMPLES: frozenset[str] = frozenset(
    raw
    for k in KINDS.values()
    for s in k.series
    if s.type != "histogram"
    for raw in s.raw
    if ":sum" not in raw
)
"""Gauge and counter samples kept (by sample name, counters ending in ``_total``)."""

KNOWN_HISTOGRAMS: frozenset[str] = frozenset(
    raw for k in KINDS.values() for s in k.series if s.type == "histogram" for raw in s.raw
)
"""Histogram families kept (their ``:count`` and ``:sum``)."""


def normal_kind(kind: str) -> str:
    """A stored kind name as today's (``llamacpp`` -> ``llama.cpp``)."""
    return KIND_ALIASES.get(kind, kind)


def kind_of_names(names: list[str] | tuple[str, ...] | set[str]) -> str | None:
    """Which server a ``/metrics`` page came from, by its names; ``None`` when none is known."""
    if any(n.startswith(OWN_PREFIXES) for n in names):
        return "llmtop-engine"
    for prefix, kind in _PREFIX_KIND:
        if any(n.startswith(prefix) for n in names):
            return kind
    return None


def kind_of_header(server: str | None) -> str | None:
    """The kind a ``Server:`` response header names (llama-server says ``llama.cpp``)."""
    if not server:
        return None
    low = server.lower()
    if "llama.cpp" in low or "llama-server" in low:
        return "llama.cpp"
    if "text-generation-inference" in low:
        return "tgi"
    return None


def _raw_value(values: dict[str, float], s: Series) -> float | None:
    if s.add:
        if all(r in values for r in s.raw):
            return sum(values[r] for r in s.raw)
        return None
    for raw in s.raw:
        if raw in values:
            return values[raw]
    return None


def canonical_values(values: dict[str, float], kind: str | None = None) -> dict[str, float]:
    """``values`` (raw keys, as the sampler stores them) under their canonical names.

    Histograms give ``<name>:count``, ``<name>:sum`` and ``<name>:mean`` where present; Ollama's
    ``/api/ps`` gives ``loaded_models`` and ``vram_bytes``. With ``kind=None`` (or an unknown
    kind), every table is tried, first found wins.
    """
    kind = normal_kind(kind) if kind else None
    tables = [KINDS[kind]] if kind in KINDS else list(KINDS.values())
    out: dict[str, float] = {}
    for table in tables:
        for s in table.series:
            if s.type == "histogram":
                for part in ("count", "sum", "mean"):
                    key = f"{s.name}:{part}"
                    if key in out:
                        continue
                    for raw in s.raw:
                        v = values.get(f"{raw}:{part}")
                        if v is not None:
                            out[key] = v
                            break
                continue
            if s.name in out:
                continue
            v = _raw_value(values, s)
            if v is not None:
                out[s.name] = v
    if "ollama:loaded_models" in values:
        out["loaded_models"] = values["ollama:loaded_models"]
    if "ollama:size_vram" in values:
        out["vram_bytes"] = values["ollama:size_vram"]
    return out


def series_read(values: dict[str, float], kind: str | None) -> tuple[str, ...]:
    """The canonical series a page gives (histograms by name), in the kind's table order."""
    canon = canonical_values(values, kind)
    names = []
    for name in canon:
        base = name.split(":", 1)[0]
        if base not in names:
            names.append(base)
    return tuple(names)


def metrics_flag(kind: str | None) -> str | None:
    """What turns a kind's ``/metrics`` on, when it has a switch."""
    k = KINDS.get(normal_kind(kind)) if kind else None
    return k.metrics_flag if k else None
