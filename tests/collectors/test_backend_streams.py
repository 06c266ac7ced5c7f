"""The Ollama and OpenAI backends against the fake server: the exact events of a stream, what goes
on the wire, keep-alive, the API key, and our parsing checked against the official clients."""

from __future__ import annotations

import asyncio
import json

import ollama
import openai
import pytest
from support.collect import Sink
from support.servers import Behavior, FakeServer

from llmtop.collectors.ollama import OllamaBackend
from llmtop.collectors.openai_compat import OpenAIBackend
from llmtop.core.errors import UsageError
from llmtop.core.events import RequestFinished
from llmtop.core.requests import GenerationRequest
from llmtop.storage.writer import EventWriter, RunInfo

MODELS = {
    "m": Behavior(tokens=5, text=" ab", prompt_tokens=7),
    "chunky": Behavior(tokens=12, tokens_per_chunk=4),
    "long": Behavior(tokens=40, itl_ms=1),
    "notimings": Behavior(tokens=6, fault="no_timings"),
    "split": Behavior(tokens=4, fault="split", text=" hé🙂", trickle_ms=3),
    "trickle": Behavior(tokens=2, fault="trickle", trickle_ms=0.2),
    "doc": Behavior(tokens=3, fault="ignore_stream"),
    "reject": Behavior(tokens=3, fault="reject_stream_options"),
}
APIS = ["ollama", "openai"]


@pytest.fixture(scope="module")
def server():
    with FakeServer(MODELS) as srv:
        yield srv


def backend_for(api: str, srv: FakeServer, **kw) -> OllamaBackend | OpenAIBackend:
    return OllamaBackend(srv.url, **kw) if api == "ollama" else OpenAIBackend(srv.openai_url, **kw)


def req(i: int, model: str = "m", **kw) -> GenerationRequest:
    return GenerationRequest(
        run_id=1, request_id=i, model=model, prompt=f"req-{i} What is AI?", **kw
    )


async def run_one(api: str, srv: FakeServer, r: GenerationRequest, **kw) -> Sink:
    sink = Sink()
    async with backend_for(api, srv, **kw) as b:
        await b.stream(r, sink)
    return sink


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("kind", ["chat", "generate"])
async def test_a_stream_gives_start_one_event_per_chunk_and_finish(server, api, kind):
    server.log(clear=True)
    sink = await run_one(api, server, req(1, api=kind, step="s", prompt_label="short", warmup=True))
    assert sink.kinds(1) == ["RequestStarted", "TokenReceived*", "RequestFinished"]
    start = sink.started(1)
    assert (start.step, start.prompt_label, start.warmup) == ("s", "short", True)
    assert start.prompt_chars == len("req-1 What is AI?")
    assert start.params["api"] == kind
    toks = sink.tokens(1)
    assert [t.index for t in toks] == [0, 1, 2, 3, 4]
    assert [t.text_len for t in toks] == [3] * 5
    assert all(t.n_tokens == 1 for t in toks)
    fin = sink.finished(1)
    assert fin.t_start_ns == start.t_ns <= fin.t_first_ns == toks[0].t_ns
    assert fin.t_last_ns == toks[-1].t_ns <= fin.t_ns
    assert (fin.chunks, fin.tokens_counted, fin.output_tokens) == (5, 5, 5)
    assert fin.server.prompt_tokens == 7
    assert fin.server.done_reason == "stop"
    if api == "ollama":  # Ollama's own clock, kept beside ours
        assert all(v is not None and v >= 0 for v in (fin.server.load_ns, fin.server.prompt_eval_ns,
                                                      fin.server.eval_ns, fin.server.total_ns))  # fmt: skip
    (log,) = server.log()
    paths = {
        ("ollama", "chat"): "/api/chat",
        ("ollama", "generate"): "/api/generate",
        ("openai", "chat"): "/v1/chat/completions",
        ("openai", "generate"): "/v1/completions",
    }
    assert log.path == paths[(api, kind)]
    assert log.outcome == "done"


async def test_ollama_body_carries_the_options(server):
    server.log(clear=True)
    r = req(1, system="be brief", max_tokens=3, temperature=0.5, top_p=0.9, top_k=40, seed=7,
            stop=("\n",), extra={"num_ctx": 2048, "keep_alive": "5m"})  # fmt: skip
    sink = await run_one("ollama", server, r)
    body = server.log()[0].body
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "req-1 What is AI?"},
    ]
    assert body["options"] == {"num_predict": 3, "temperature": 0.5, "top_p": 0.9, "top_k": 40,
                               "seed": 7, "stop": ["\n"], "num_ctx": 2048}  # fmt: skip
    assert body["keep_alive"] == "5m" and body["stream"] is True
    fin = sink.finished(1)  # the server stopped at max_tokens
    assert (fin.output_tokens, fin.server.done_reason) == (3, "length")


async def test_openai_body_carries_the_options(server):
    server.log(clear=True)
    r = req(1, api="generate", max_tokens=2, temperature=0.0, seed=3, stop=("x", "y"),
            extra={"presence_penalty": 0.5})  # fmt: skip
    sink = await run_one("openai", server, r)
    body = server.log()[0].body
    assert body == {"model": "m", "stream": True, "prompt": "req-1 What is AI?",
                    "stream_options": {"include_usage": True}, "max_tokens": 2,
                    "temperature": 0.0, "seed": 3, "stop": ["x", "y"], "presence_penalty": 0.5}  # fmt: skip
    fin = sink.finished(1)
    assert (fin.output_tokens, fin.server.output_tokens, fin.server.done_reason) == (2, 2, "length")


async def test_parse_matches_the_official_ollama_client(server):
    sink = await run_one("ollama", server, req(1, model="chunky"))
    client = ollama.AsyncClient(host=server.url)
    messages = [{"role": "user", "content": "req-1 What is AI?"}]
    stream = await client.chat(model="chunky", messages=messages, stream=True)
    pieces, final = [], None
    async for part in stream:
        if part.message.content:
            pieces.append(part.message.content)
        if part.done:
            final = part
    assert final is not None
    ours = sink.finished(1)
    assert ours.chunks == len(pieces) == 3
    assert [t.text_len for t in sink.tokens(1)] == [len(p) for p in pieces]
    assert ours.server.output_tokens == final.eval_count == 12
    assert ours.output_tokens == 12  # the server's count wins over the 3 chunks we saw
    assert ours.server.prompt_tokens == final.prompt_eval_count
    assert ours.server.done_reason == final.done_reason


async def test_parse_matches_the_openai_client(server):
    sink = await run_one("openai", server, req(1, model="chunky"))
    client = openai.AsyncOpenAI(base_url=server.openai_url, api_key="unused", max_retries=0)
    stream = await client.chat.completions.create(
        model="chunky", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    pieces, usage = [], None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    await client.close()
    ours = sink.finished(1)
    assert ours.chunks == len(pieces) == 3
    assert [t.text_len for t in sink.tokens(1)] == [len(p) for p in pieces]
    assert usage is not None and ours.output_tokens == usage.completion_tokens == 12


@pytest.mark.parametrize("api", APIS)
async def test_one_kept_alive_connection_per_concurrent_request(server, api):
    server.log(clear=True)
    sink = Sink()
    async with backend_for(api, server) as b:
        for i in range(4):  # sequential: one connection, reused
            await b.stream(req(i), sink)
        await asyncio.gather(*(b.stream(req(10 + i, model="long"), sink) for i in range(3)))
        await asyncio.gather(*(b.stream(req(20 + i, model="long"), sink) for i in range(3)))
    logs = server.log()
    for i in [0, 1, 2, 3, 10, 11, 12, 20, 21, 22]:
        assert isinstance(sink.final(i), RequestFinished)
    assert len({tuple(r.peer) for r in logs[:4]}) == 1
    assert len({tuple(r.peer) for r in logs[4:]}) == 3  # 6 concurrent requests, 3 at a time


async def test_api_key_goes_in_a_header_and_nowhere_else(tmp_path, monkeypatch):
    secret = "sk-llmtop-test-0123456789"
    monkeypatch.setenv("LLMTOP_TEST_KEY", secret)
    with FakeServer({"m": Behavior(tokens=2)}, api_key=secret) as srv:
        sink = Sink()
        db = tmp_path / "k.db"
        async with EventWriter(db) as w:
            run_id, _ = await w.create_run(
                RunInfo(backend="openai", base_url=srv.openai_url, model="m")
            )

            def emit(ev):
                sink(ev)
                w.put_nowait(ev)

            b = OpenAIBackend(srv.openai_url, api_key_env="LLMTOP_TEST_KEY")
            async with b:
                await b.check("m")
                await b.stream(GenerationRequest(run_id, 1, "m", "hi"), emit)
            await w.finish_run(run_id, "finished")
        assert srv.log()[0].auth == f"Bearer {secret}"
        assert isinstance(sink.final(1), RequestFinished)
        assert secret not in repr(b) and not any(secret in repr(e) for e in sink.events)
        data = b"".join(p.read_bytes() for p in tmp_path.iterdir())
        assert secret.encode() not in data

        monkeypatch.delenv("LLMTOP_TEST_KEY")
        with pytest.raises(UsageError, match="LLMTOP_TEST_KEY is not set"):
            OpenAIBackend(srv.openai_url, api_key_env="LLMTOP_TEST_KEY")
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        sink = Sink()
        async with OpenAIBackend(srv.openai_url) as b:  # no key at all: the server says 401
            await b.stream(GenerationRequest(1, 2, "m", "hi"), sink)
        failed = sink.failed(2)
        assert (failed.error_kind, failed.http_status) == ("http_status", 401)
        assert "Incorrect API key" in failed.message


async def test_a_server_refusing_stream_options_is_asked_again_without(server):
    server.log(clear=True)
    sink = Sink()
    async with OpenAIBackend(server.openai_url) as b:
        await b.stream(req(1, model="reject"), sink)
        await b.stream(req(2, model="reject"), sink)
        assert b.include_usage is False
    first, retry, second = server.log()
    assert "stream_options" in first.body and first.outcome == "fault"
    assert "stream_options" not in retry.body and "stream_options" not in second.body
    assert sink.kinds(1) == ["RequestStarted", "TokenReceived*", "RequestFinished"]
    fin = sink.finished(1)
    assert (
        sink.started(1).t_ns < first.t_recv_ns < fin.t_start_ns < retry.t_recv_ns
    )  # t0 of the retry
    assert (fin.server.output_tokens, fin.output_tokens) == (None, 3)  # counted from chunks


@pytest.mark.parametrize("api", APIS)
async def test_without_server_counts_the_chunks_are_counted(server, api):
    fin = (await run_one(api, server, req(1, model="notimings"))).finished(1)
    assert fin.server.output_tokens is None and fin.server.eval_ns is None
    assert fin.output_tokens == fin.tokens_counted == fin.chunks == 6


@pytest.mark.parametrize("api", APIS)
async def test_lines_split_across_reads_and_inside_a_character(server, api):
    sink = await run_one(api, server, req(1, model="split"))
    fin = sink.finished(1)
    assert fin.chunks == 4 and [t.text_len for t in sink.tokens(1)] == [len(" hé🙂")] * 4


@pytest.mark.parametrize("api", APIS)
async def test_a_stream_trickling_byte_by_byte(server, api):
    fin = (await run_one(api, server, req(1, model="trickle"))).finished(1)
    assert (fin.chunks, fin.output_tokens) == (2, 2)


@pytest.mark.parametrize("api", APIS)
async def test_a_server_that_ignores_stream_gives_one_chunk(server, api):
    sink = await run_one(api, server, req(1, model="doc"))
    fin = sink.finished(1)
    assert fin.chunks == 1 and fin.output_tokens == 3
    assert sink.tokens(1)[0].text_len == len(" tok") * 3
    assert fin.t_first_ns == fin.t_last_ns


def sse(*events: str, sep: str = "\n") -> str:
    return "".join(e.replace("\n", sep) + sep for e in events)


def chunk(text: str) -> str:
    return "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]}) + "\n"


USAGE = (
    "data: "
    + json.dumps({"choices": [], "usage": {"completion_tokens": 3, "prompt_tokens": 1}})
    + "\n"
)
SSE_CASES = {
    "crlf": sse(": ping\n", "event: message\nid: 1\nretry: 10\n" + chunk("ab"), chunk("c"), USAGE, "data: [DONE]\n", sep="\r\n"),
    "cr": sse(chunk("ab"), chunk("c"), USAGE, "data: [DONE]\n", sep="\r"),
    "multiline": sse('data: {"choices": [{"index": 0,\ndata: "delta": {"content": "ab"}}]}\n', chunk("c"),
                     "data\n", USAGE, "data:[DONE]\n"),
    "no_done": sse(chunk("ab"), chunk("c"),
                   "data: " + json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}) + "\n", USAGE),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(SSE_CASES))
@pytest.mark.parametrize("chunk_bytes", [0, 3])
async def test_sse_decoding_agrees_with_httpx_sse(case, chunk_bytes):
    """Our SSE reading against httpx-sse's on the same bytes, whole or 3 bytes per write."""
    import httpx
    from httpx_sse import aconnect_sse

    raw = SSE_CASES[case]
    with FakeServer({"m": Behavior(raw=raw, raw_chunk=chunk_bytes, trickle_ms=0.1)}) as srv:
        sink = await run_one("openai", srv, req(1))
        reference = []
        async with httpx.AsyncClient() as client, aconnect_sse(
            client, "POST", f"{srv.openai_url}/chat/completions", json={"model": "m", "stream": True}
        ) as es:  # fmt: skip
            async for ev in es.aiter_sse():
                if ev.data and ev.data != "[DONE]":
                    choices = ev.json()["choices"]
                    if choices and choices[0]["delta"].get("content"):
                        reference.append(len(choices[0]["delta"]["content"]))
    fin = sink.finished(1)
    assert [t.text_len for t in sink.tokens(1)] == reference == [2, 1]
    assert fin.output_tokens == 3  # from the usage event
