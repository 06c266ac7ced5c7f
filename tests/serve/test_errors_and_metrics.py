"""Bad requests get the real servers' error shapes and the server stays up; /metrics reads like
vLLM's and counts what was served."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

OLLAMA_POSTS = ["/api/generate", "/api/chat", "/api/show"]
OPENAI_POSTS = ["/v1/chat/completions", "/v1/completions"]


@pytest.fixture(scope="module")
def http(url: str):
    with httpx.Client(base_url=url, timeout=60) as c:
        yield c


def assert_alive(http: httpx.Client) -> None:
    r = http.post("/api/generate", json={"model": "smollm2", "prompt": "Hi", "stream": False,
                                         "options": {"num_predict": 1}})  # fmt: skip
    assert r.status_code == 200 and r.json()["eval_count"] == 1


@pytest.mark.parametrize("path", OLLAMA_POSTS + OPENAI_POSTS)
@pytest.mark.parametrize("body", [b"{not json", b"", b"[1, 2]"])
def test_malformed_json_is_400_with_an_error(http, path, body):
    r = http.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    err = r.json()["error"]
    message = err if path.startswith("/api") else err["message"]
    assert "JSON" in message or "body" in message


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"prompt": "hi"}, "'model' is required"),
        ({"model": "smollm2", "prompt": "hi", "options": {"temperature": "hot"}}, "temperature"),
        ({"model": "smollm2", "prompt": "hi", "options": {"num_predict": 2.5}}, "num_predict"),
        ({"model": "smollm2", "prompt": "hi", "options": {"top_p": 3}}, "top_p"),
        ({"model": "smollm2", "prompt": "hi", "options": {"stop": 5}}, "stop"),
        ({"model": "smollm2", "prompt": "hi", "stream": "yes"}, "stream"),
        ({"model": "smollm2", "prompt": "hi", "format": "json"}, "format"),
        ({"model": "smollm2", "prompt": "word " * 600}, "longer than the context of 512"),
    ],
)
def test_ollama_bad_fields_are_400(http, body, fragment):
    r = http.post("/api/generate", json=body)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]


def test_ollama_bad_messages_and_unknown_model(http):
    r = http.post("/api/chat", json={"model": "smollm2", "messages": [{"role": "robot"}]})
    assert r.status_code == 400 and "role" in r.json()["error"]
    r = http.post("/api/chat", json={"model": "nope", "messages": []})
    assert r.status_code == 404 and r.json() == {"error": "model 'nope' not found"}
    r = http.post("/api/show", json={"model": "nope"})
    assert r.status_code == 404
    assert_alive(http)


def test_openai_bad_fields_are_400_with_param(http):
    r = http.post("/v1/chat/completions",
                  json={"model": "smollm2", "messages": [{"role": "user", "content": "x"}],
                        "max_tokens": "many"})  # fmt: skip
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == "max_tokens"
    r = http.post("/v1/completions", json={"model": "smollm2", "prompt": ["a", "b"]})
    assert r.status_code == 400 and "one prompt" in r.json()["error"]["message"]
    assert_alive(http)


def test_empty_ollama_prompt_answers_like_a_model_load(http):
    r = http.post("/api/generate", json={"model": "smollm2"})
    assert r.status_code == 200 and r.json()["done_reason"] == "load"


def metrics(http: httpx.Client) -> dict[str, float]:
    """Every sample of /metrics, keyed by name and labels (model_name left out)."""
    text = http.get("/metrics").text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "model_name")
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_metrics_use_vllm_names_and_count_tokens(http):
    before = metrics(http)
    for name in ["vllm:num_requests_running", "vllm:num_requests_waiting",
                 "vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc",
                 "llmtop_engine_kv_cache_bytes",
                 "llmtop_engine_batch_size", "vllm:prompt_tokens_total",
                 "vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_count",
                 "vllm:time_per_output_token_seconds_count",
                 "vllm:e2e_request_latency_seconds_count",
                 "vllm:request_queue_time_seconds_count",
                 "vllm:request_prefill_time_seconds_count",
                 "vllm:request_decode_time_seconds_count"]:  # fmt: skip
        assert name in before, name
    r = http.post("/api/generate", json={"model": "smollm2", "prompt": "Hi", "stream": False,
                                         "options": {"num_predict": 5, "temperature": 0}})  # fmt: skip
    body = r.json()
    after = metrics(http)
    assert (
        after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"]
        == (body["prompt_eval_count"])
    )
    assert after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"] == 5
    assert after["vllm:time_to_first_token_seconds_count"] == (
        before["vllm:time_to_first_token_seconds_count"] + 1
    )
    # four gaps between five tokens
    assert after["vllm:time_per_output_token_seconds_count"] == (
        before["vllm:time_per_output_token_seconds_count"] + 4
    )
    assert after["vllm:request_success_total{finished_reason=length}"] == (
        before["vllm:request_success_total{finished_reason=length}"] + 1
    )
    # the request's own durations, as the final line reported them (ns there, seconds here)
    for phase, field in (("prefill", "prompt_eval_duration"), ("decode", "eval_duration")):
        name = f"vllm:request_{phase}_time_seconds_sum"
        assert after[name] - before[name] == pytest.approx(body[field] / 1e9, abs=1e-6)
    assert after["vllm:num_requests_running"] == 0 and after["llmtop_engine_kv_cache_bytes"] == 0
    assert after["llmtop_engine_kv_cache_capacity_bytes"] > 0


def test_error_answers_are_counted_by_status(http):
    before = metrics(http)
    for status in ("400", "404", "413", "503"):
        assert f"llmtop_engine_http_errors_total{{status={status}}}" in before, status
    http.post("/api/generate", content=b"{not json", headers={"content-type": "application/json"})
    http.post("/api/generate", json={"model": "nope", "prompt": "hi"})
    http.post("/v1/completions", json={"model": "nope", "prompt": "hi"})
    assert_alive(http)  # a 200 is not counted
    after = metrics(http)

    def grew(status: str) -> float:
        key = f"llmtop_engine_http_errors_total{{status={status}}}"
        return after[key] - before[key]

    assert (grew("400"), grew("404"), grew("413"), grew("503")) == (1, 2, 0, 0)


def test_prefix_cache_hits_are_counted(http):
    """The same prompt twice: the second finds its start (all but the last tokens, which are
    always computed) in the prefix cache, and /metrics says so with vLLM's names."""
    body = {"model": "smollm2", "prompt": "Tell me about the prefix cache.", "stream": False,
            "options": {"num_predict": 1}}  # fmt: skip
    http.post("/api/generate", json=body)
    before = metrics(http)
    n = http.post("/api/generate", json=body).json()["prompt_eval_count"]
    after = metrics(http)
    queried = after["vllm:prefix_cache_queries_total"] - before["vllm:prefix_cache_queries_total"]
    hits = after["vllm:prefix_cache_hits_total"] - before["vllm:prefix_cache_hits_total"]
    assert queried == n
    assert n - 4 <= hits < n  # a few last tokens are computed again for exact first logits
