"""The server sampler: Ollama /api/ps and Prometheus /metrics from real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from support.collect import collect_events
from support.servers import FakeServer, refused_url

from llmtop.collectors.server_metrics import (
    PlainGet,
    ServerMetricsSampler,
    histogram_values,
    parse_ollama_ps,
    parse_prometheus,
    server_kind,
    server_root,
)
from llmtop.core.events import ServerSampled, SourceDown
from llmtop.core.server_series import canonical_values

VLLM = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="a"} 3.0
vllm:num_requests_running{engine="1",model_name="a"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="a"} 7.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="a"} 0.25
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{model_name="a"} 1200.0
vllm:prompt_tokens_created{model_name="a"} 1.7e9
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16"} 1.0
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="a"} 2.0
vllm:time_to_first_token_seconds_bucket{le="0.5",model_name="a"} 6.0
vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="a"} 8.0
vllm:time_to_first_token_seconds_count{model_name="a"} 8.0
vllm:time_to_first_token_seconds_sum{model_name="a"} 2.4
"""


def test_prometheus_keeps_known_names_summed_over_labels():
    scrape = parse_prometheus(VLLM)
    assert scrape.values == {
        "vllm:num_requests_running": 5.0,
        "vllm:num_requests_waiting": 7.0,
        "vllm:kv_cache_usage_perc": 0.25,
        "vllm:prompt_tokens_total": 1200.0,
    }
    assert scrape.histograms["vllm:time_to_first_token_seconds"] == (8.0, 2.4)
    assert server_kind([*scrape.values, *scrape.histograms]) == "vllm"


@pytest.mark.parametrize(
    ("text", "key", "kind"),
    [
        ("# TYPE tgi_queue_size gauge\ntgi_queue_size 4\n# TYPE tgi_request_count counter\n"
         "tgi_request_count 9\n", "tgi_request_count_total", "tgi"),
        ("sglang:num_running_reqs 2\nsglang:token_usage 0.5\n", "sglang:token_usage", "sglang"),
        ("# TYPE llamacpp:kv_cache_usage_ratio gauge\nllamacpp:kv_cache_usage_ratio 0.125\n"
         "llamacpp:requests_processing 1\n", "llamacpp:kv_cache_usage_ratio", "llama.cpp"),
        ("# TYPE llmtop_engine_batch_size gauge\nllmtop_engine_batch_size 3\n"
         "vllm:num_requests_running 3\n", "llmtop_engine_batch_size", "llmtop-engine"),
    ],
)  # fmt: skip
def test_prometheus_names_of_each_server(text, key, kind):
    values = parse_prometheus(text).values
    assert key in values
    assert server_kind(values) == kind


def test_canonical_names_map_every_server():
    assert canonical_values(parse_prometheus(VLLM).values, "vllm") == {
        "requests_running": 5.0, "requests_waiting": 7.0, "kv_cache_usage": 0.25,
        "prompt_tokens_total": 1200.0,
    }  # fmt: skip
    tgi = canonical_values(parse_prometheus("tgi_queue_size 4\ntgi_batch_current_size 2\n").values)
    assert tgi == {"requests_running": 2.0, "requests_waiting": 4.0}


def test_histograms_give_count_sum_and_the_interval_mean_never_percentiles():
    before = (8.0, 2.4)
    now = (12.0, 3.6)  # 4 new requests, 1.2 s between them
    v = histogram_values("h", now, before)
    assert v == {"h:count": 12.0, "h:sum": 3.6, "h:mean": pytest.approx(0.3)}
    assert "h:mean" not in histogram_values("h", now, None)  # first scrape: no interval
    assert "h:mean" not in histogram_values("h", before, now)  # a restart: counts went down
    assert not [k for k in parse_prometheus(VLLM).values if k.endswith(("p50", "p95", "p99"))]


def test_ollama_ps_values():
    v = parse_ollama_ps({"models": [
        {"name": "llama3.1:8b", "size": 6e9, "size_vram": 5e9, "context_length": 4096},
        {"name": "qwen:0.5b", "size": 1e9, "size_vram": 0},
    ]})  # fmt: skip
    assert v["ollama:loaded_models"] == 2
    assert v["ollama:loaded:llama3.1:8b:size_vram"] == 5e9
    assert v["ollama:loaded:llama3.1:8b:context_length"] == 4096
    assert (v["ollama:size"], v["ollama:size_vram"]) == (7e9, 5e9)
    assert parse_ollama_ps({"models": []}) == {
        "ollama:loaded_models": 0, "ollama:size": 0.0, "ollama:size_vram": 0.0
    }  # fmt: skip


def test_server_root_strips_the_openai_path():
    assert server_root("http://h:8000/v1") == "http://h:8000"
    assert server_root("http://h:8000/v1/") == "http://h:8000"
    assert server_root("http://h:11434") == "http://h:11434"
    assert server_root("http://h/proxy/v1") == "http://h/proxy"


async def test_sampler_reads_ps_and_metrics_of_a_live_server():
    with FakeServer() as srv:
        sampler = ServerMetricsSampler(4, srv.url, "engine", hz=20)
        got = await collect_events(sampler, lambda g: {e.source for e in g if isinstance(e, ServerSampled)} >= {"ollama", "vllm"})  # fmt: skip
    by_source = {e.source: e for e in got if isinstance(e, ServerSampled)}
    assert by_source["vllm"].values["scrape_ms"] > 0
    assert by_source["ollama"].values["ollama:loaded_models"] == 1
    assert by_source["ollama"].values["ollama:loaded:fake:size"] == 100_000_000
    assert by_source["vllm"].values["vllm:num_requests_running"] == 0
    assert by_source["vllm"].run_id == 4
    assert not [e for e in got if isinstance(e, SourceDown)]


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/metrics" and self.server.garbage:  # type: ignore[attr-defined]
            body, status = b"this is { not prometheus\n", 200
        elif self.path == "/metrics" and self.server.broken:  # type: ignore[attr-defined]
            body, status = b"vllm:num_requests_running{model= 3\n", 200
        else:
            body, status = b"404 page not found", 404
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def plain_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.garbage = srv.broken = False  # type: ignore[attr-defined]
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


async def test_a_server_without_metrics_is_said_once_and_not_asked_again(plain_server):
    url = f"http://127.0.0.1:{plain_server.server_address[1]}/v1"
    got = []
    sampler = ServerMetricsSampler(1, url, "openai", hz=50)
    await asyncio.wait_for(sampler.run(got.append), 5)  # returns: nothing left to ask
    assert len(got) == 1 and isinstance(got[0], SourceDown)
    assert got[0].source == "server:metrics" and "not served (HTTP 404)" in got[0].reason
    assert f"127.0.0.1:{plain_server.server_address[1]}/metrics" in got[0].reason


@pytest.mark.parametrize(
    ("page", "fragment"),
    [
        ("garbage", "no metrics llmtop knows"),
        ("broken", "unreadable"),
        (None, "unreachable: nothing answers (connection refused)"),
    ],
)
async def test_unreadable_and_unreachable_sources_are_said_once(plain_server, page, fragment):
    base = refused_url()
    if page is not None:
        setattr(plain_server, page, True)
        base = f"http://127.0.0.1:{plain_server.server_address[1]}"
    sampler = ServerMetricsSampler(1, base, "openai")
    ep = sampler.endpoints[0]
    got = []
    async with PlainGet() as client:
        for _ in range(3):
            await sampler.poll(client, ep, got.append)
    assert len(got) == 1 and fragment in got[0].reason, got
    assert not ep.gone and ep.backoff == 8.0  # it keeps trying, less and less often


def test_only_the_lines_we_keep_are_parsed():
    page = VLLM + "".join(f'vllm:other_series_{i}{{x="{i}"}} {i}\n' for i in range(500))
    assert parse_prometheus(page).values == parse_prometheus(VLLM).values
    kept = [line.split("{")[0].split()[0] for line in page.splitlines() if line[0] != "#"]
    assert len(kept) > 500
