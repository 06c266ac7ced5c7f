"""vLLM 0.32 and llama.cpp's llama-server as they really answered (tests/data/real_servers/):
their /metrics pages read under one vocabulary, their kind and version found, their headers and
streams replayed by the fake server over real sockets."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from support.cli import run_llmtop
from support.collect import collect_events
from support.fake_personas import recorded, stream_body, stream_usage
from support.servers import Behavior, FakeServer, Persona

from llmtop.collectors.openai_compat import OpenAIBackend
from llmtop.collectors.server_metrics import (
    PlainGet,
    ServerMetricsSampler,
    histogram_values,
    parse_prometheus,
    probe,
    server_kind,
)
from llmtop.core.events import (
    RequestFinished,
    ServerIdentified,
    ServerSampled,
    SourceDown,
    TokenReceived,
)
from llmtop.core.requests import GenerationRequest
from llmtop.core.server_series import KINDS, canonical_values, series_read


def canon(name: str) -> tuple[str, dict[str, float]]:
    scrape = parse_prometheus(recorded(name))
    values = dict(scrape.values)
    for h, state in scrape.histograms.items():
        values.update(histogram_values(h, state, None))
    kind = server_kind([*values, *scrape.histograms])
    return kind, canonical_values(values, kind)


def test_vllm_032_page_reads_under_the_canonical_names():
    kind, c = canon("vllm-metrics-after.txt")
    assert kind == "vllm"
    assert c["prompt_tokens_total"] == 144 and c["generation_tokens_total"] == 192
    assert c["cached_prompt_tokens_total"] == 0 and c["requests_finished_total"] == 4
    assert c["kv_cache_usage"] == 0.0  # vllm:kv_cache_usage_perc (0.32's name)
    # 0.32 renamed TPOT: vllm:request_time_per_output_token_seconds
    assert c["tpot_s:count"] == 4 and c["tpot_s:sum"] == pytest.approx(0.13014211044678922)
    assert c["queue_s:sum"] == pytest.approx(0.00010736900003394112)
    _, during = canon("vllm-metrics-during-load.txt")
    assert during["requests_running"] >= 0


def test_llamacpp_page_reads_with_cached_prompt_tokens_apart():
    kind, c = canon("llama-server-metrics-after.txt")
    assert kind == "llama.cpp"
    # llama.cpp's prompt_tokens_total excludes cached tokens: llmtop's includes them, as vLLM's
    assert c["prompt_tokens_total"] == 216 + 0 and c["cached_prompt_tokens_total"] == 0
    assert c["generation_tokens_total"] == 384
    assert "kv_cache_usage" not in c  # this llama-server has no KV-cache series any more
    _, during = canon("llama-server-metrics-during-load.txt")
    assert during["requests_running"] == 6 and during["generation_tokens_total"] == 0
    assert series_read(
        parse_prometheus(recorded("llama-server-metrics-after.txt")).values, "llama.cpp"
    ) == (
        "requests_running", "requests_waiting", "prompt_tokens_total",
        "cached_prompt_tokens_total", "generation_tokens_total", "prompt_seconds_total",
        "generation_seconds_total", "busy_slots_per_decode",
    )  # fmt: skip


def test_every_kind_has_a_table_and_the_same_words():
    assert set(KINDS) == {"vllm", "llama.cpp", "sglang", "tgi", "ollama", "llmtop-engine"}
    for k in KINDS.values():
        for s in k.series:
            assert s.raw, (k.kind, s.name)
            assert s.type != "counter" or s.name.endswith("_total"), s.name


@pytest.mark.parametrize(("kind", "version"), [("llama.cpp", "b0-unknown"), ("vllm", "0.32.0")])
async def test_sampler_identifies_the_server_and_its_version(kind, version):
    with FakeServer(persona=Persona(kind)) as srv:
        sampler = ServerMetricsSampler(3, srv.openai_url, "openai", hz=20)
        got = await collect_events(sampler, lambda g: any(isinstance(e, ServerSampled) for e in g))
    (ident,) = [e for e in got if isinstance(e, ServerIdentified)]
    assert (ident.kind, ident.version, ident.run_id) == (kind, version, 3)
    assert "generation_tokens_total" in ident.series
    sample = next(e for e in got if isinstance(e, ServerSampled))
    assert sample.source == kind and sample.values["scrape_ms"] >= 0


async def test_llama_server_without_metrics_names_the_flag():
    with FakeServer(persona=Persona("llama.cpp", metrics=False)) as srv:
        sampler = ServerMetricsSampler(None, srv.openai_url, "openai", hz=20)
        got = await asyncio.wait_for(_run_to_end(sampler), 20)
    (down,) = [e for e in got if isinstance(e, SourceDown)]
    assert "HTTP 501" in down.reason and "start llama-server with --metrics" in down.reason
    (ident,) = [e for e in got if isinstance(e, ServerIdentified)]
    assert (ident.kind, ident.version, ident.series) == ("llama.cpp", "b0-unknown", ())


async def _run_to_end(sampler):
    got = []
    await sampler.run(got.append)  # returns: no endpoint left to ask
    return got


async def test_probe_and_doctor_say_kind_version_and_series():
    with FakeServer(persona=Persona("vllm")) as srv:
        async with PlainGet() as get:
            p = await probe(get, srv.openai_url)
        assert (p.kind, p.version, p.status) == ("vllm", "0.32.0", 200)
        assert "tpot_s" in p.series and "kv_cache_usage" in p.series
        proc = await asyncio.to_thread(run_llmtop, "doctor", "--url", srv.openai_url, "--json")
    assert proc.returncode == 0, proc.stderr
    row = next(c for c in json.loads(proc.stdout) if c["name"].strip() == "/metrics")
    assert row["state"] == "ok" and row["detail"].startswith("vllm 0.32.0; reads ")
    assert "generation_tokens_total" in row["detail"]


async def test_doctor_names_the_metrics_flag_of_a_llama_server_without_it():
    with FakeServer(persona=Persona("llama.cpp", metrics=False)) as srv:
        proc = await asyncio.to_thread(run_llmtop, "doctor", "--url", srv.openai_url, "--json")
    assert proc.returncode == 0, proc.stderr
    row = next(c for c in json.loads(proc.stdout) if c["name"].strip() == "/metrics")
    assert row["state"] == "off"
    assert row["detail"].startswith("llama.cpp b0-unknown;")
    assert "HTTP 501" in row["detail"] and "--metrics" in row["detail"]


@pytest.mark.parametrize("kind", ["llama.cpp", "vllm"])
async def test_recorded_stream_and_headers_replayed_read_exactly(kind):
    """The real server's bytes (its role chunk, its usage chunk, llama.cpp's timings) through the
    OpenAI backend: the tokens and the server's counts come out as the server sent them."""
    raw = Behavior(raw=stream_body(kind))
    with FakeServer({"smollm2": raw}, persona=Persona(kind)) as srv:
        async with httpx.AsyncClient() as client:
            r = await client.post(srv.openai_url + "/chat/completions", json={"model": "smollm2"})
        headers = r.headers
        got: list = []
        backend = OpenAIBackend(srv.openai_url)
        async with backend:
            req = GenerationRequest(run_id=1, request_id=1, model="smollm2", prompt="Hi",
                                    max_tokens=5)  # fmt: skip
            await backend.stream(req, got.append)
    if kind == "llama.cpp":
        assert headers["server"] == "llama.cpp" and headers["keep-alive"] == "timeout=5, max=100"
    else:
        assert headers["server"] == "uvicorn"
    usage = stream_usage(kind)
    (done,) = [e for e in got if isinstance(e, RequestFinished)]
    assert done.output_tokens == usage["completion_tokens"] == 5
    assert done.server.prompt_tokens == usage["prompt_tokens"] == 31
    assert sum(e.n_tokens for e in got if isinstance(e, TokenReceived)) == 5
