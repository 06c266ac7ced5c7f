"""The servers' own metric series that llmtop understands, and one name for each quantity that
every server calls differently (vLLM, SGLang, TGI, llama.cpp, Ollama, ``llmtop serve``).

Shared vocabulary: the server sampler keeps only these series, and the live aggregator, storage
and reports read them under their canonical names.
"""

from __future__ import annotations

KNOWN_SAMPLES: frozenset[str] = frozenset(
    """
    vllm:num_requests_running vllm:num_requests_waiting vllm:num_requests_swapped
    vllm:gpu_cache_usage_perc vllm:kv_cache_usage_perc vllm:cpu_cache_usage_perc
    vllm:prompt_tokens_total vllm:generation_tokens_total vllm:num_preemptions_total
    vllm:request_success_total vllm:prefix_cache_queries_total vllm:prefix_cache_hits_total
    sglang:num_running_reqs sglang:num_queue_reqs sglang:token_usage sglang:gen_throughput
    sglang:cache_hit_rate sglang:prompt_tokens_total sglang:generation_tokens_total
    sglang:num_requests_total tgi_queue_size tgi_batch_current_size
    tgi_batch_current_max_tokens tgi_request_count_total tgi_request_success_total
    tgi_request_failure_total llamacpp:prompt_tokens_total llamacpp:tokens_predicted_total
    llamacpp:prompt_tokens_seconds llamacpp:predicted_tokens_seconds
    llamacpp:kv_cache_usage_ratio llamacpp:kv_cache_tokens llamacpp:requests_processing
    llamacpp:requests_deferred llamacpp:n_decode_total llamacpp:n_busy_slots_per_decode
    """.split()  # noqa: SIM905 - a name list reads best as names
)
"""Gauge and counter samples kept (by sample name, counters ending in ``_total``)."""

KNOWN_HISTOGRAMS: frozenset[str] = frozenset(
    """
    vllm:time_to_first_token_seconds vllm:time_per_output_token_seconds
    vllm:inter_token_latency_seconds vllm:e2e_request_latency_seconds
    vllm:request_queue_time_seconds vllm:request_prefill_time_seconds
    vllm:request_decode_time_seconds sglang:time_to_first_token_seconds
    sglang:time_per_output_token_seconds sglang:inter_token_latency_seconds
    sglang:e2e_request_latency_seconds tgi_request_duration tgi_request_queue_duration
    tgi_request_mean_time_per_token_duration tgi_request_inference_duration
    tgi_request_generated_tokens tgi_request_input_length
    """.split()  # noqa: SIM905 - a name list reads best as names
)
OWN_PREFIXES = ("llmtop_", "llmtop:")
"""``llmtop serve``'s own metrics: all kept."""

CANONICAL: dict[str, tuple[str, ...]] = {
    "requests_running": ("vllm:num_requests_running", "sglang:num_running_reqs",
                         "tgi_batch_current_size", "llamacpp:requests_processing"),
    "requests_waiting": ("vllm:num_requests_waiting", "sglang:num_queue_reqs", "tgi_queue_size",
                         "llamacpp:requests_deferred"),
    "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc",
                       "sglang:token_usage", "llamacpp:kv_cache_usage_ratio"),
    "prompt_tokens_total": ("vllm:prompt_tokens_total", "sglang:prompt_tokens_total",
                            "llamacpp:prompt_tokens_total"),
    "generation_tokens_total": ("vllm:generation_tokens_total", "sglang:generation_tokens_total",
                                "llamacpp:tokens_predicted_total"),
    "ttft_s_p50": ("vllm:time_to_first_token_seconds:p50",
                   "sglang:time_to_first_token_seconds:p50"),
    "ttft_s_p95": ("vllm:time_to_first_token_seconds:p95",
                   "sglang:time_to_first_token_seconds:p95"),
    "tpot_s_p50": ("vllm:time_per_output_token_seconds:p50",
                   "vllm:inter_token_latency_seconds:p50",
                   "sglang:time_per_output_token_seconds:p50",
                   "sglang:inter_token_latency_seconds:p50",
                   "tgi_request_mean_time_per_token_duration:p50"),
    "vram_bytes": ("ollama:size_vram",),
    "loaded_models": ("ollama:loaded_models",),
}  # fmt: skip
"""One name for what every server calls differently: canonical -> the raw keys, first wins."""


def canonical_values(values: dict[str, float]) -> dict[str, float]:
    """The canonical names (``requests_running``, ``kv_cache_usage``...) that ``values`` has."""
    out: dict[str, float] = {}
    for name, keys in CANONICAL.items():
        for k in keys:
            if k in values:
                out[name] = values[k]
                break
    return out
