"""``llmtop serve`` under abuse: oversized, broken and hostile requests, a client that reads
nothing, a full queue, 500 connections at once; each gets the right status in its API's error
shape, the server keeps serving the others, its memory stays bounded, and nothing a client sends
puts a traceback in its log.

One real server for the module (the real model), started as a user starts it, with small
limits so that every limit is cheap to reach. Each README row is one case below; the rows run
in order against the same server, so a slot or queue place leaked by one row shows up in the
next (``queue-full`` counts its places exactly).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psutil
import pytest
from faults_table import check_rows, params
from serve.serve_process import ServeProcess, start_serve
from serve_client import (
    ABORTED,
    ENDPOINTS,
    MODEL,
    RUNNING,
    api_of,
    body_for,
    close_hard,
    connect,
    error_text,
    finish_of,
    metrics,
    read_reply,
    request_head,
    text_of,
)
from support.cli import run_llmtop

from llmtop.engine.admission import Admission
from llmtop.engine.api_common import ApiError
from llmtop.engine.jobs import Done

pytestmark = pytest.mark.slow

CONTEXT = 512
MAX_BATCH = 2
MAX_QUEUE = 4
MAX_BODY = 65536
IDLE_TIMEOUT_S = 2
SERVE_ARGS = ("--port", "0", "--ctx", str(CONTEXT), "--max-batch", str(MAX_BATCH),
              "--max-queue", str(MAX_QUEUE), "--max-body-bytes", str(MAX_BODY),
              "--idle-timeout", str(IDLE_TIMEOUT_S))  # fmt: skip
"""No --host: the default (loopback) is under test too."""
MIB = 1 << 20


@dataclass
class Served:
    sp: ServeProcess
    port: int
    http: httpx.Client
    tmp: Path

    @property
    def rss(self) -> int:
        return psutil.Process(self.sp.proc.pid).memory_info().rss

    def post(self, path: str, body: Any) -> httpx.Response:
        return self.http.post(path, json=body)

    def post_raw(self, path: str, content: bytes) -> httpx.Response:
        return self.http.post(path, content=content, headers={"content-type": "application/json"})

    def assert_serving(self) -> None:
        for path in ("/api/generate", "/v1/completions"):
            r = self.post(path, body_for(path, 2))
            assert r.status_code == 200, r.text
            assert finish_of(path, r.json())[:2] == ("length", 2)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    sp = start_serve(*SERVE_ARGS)
    port = int(sp.url.rsplit(":", 1)[1])
    with httpx.Client(base_url=sp.url, timeout=60) as http:
        yield Served(sp, port, http, tmp_path_factory.mktemp("serve-abuse"))
    assert sp.stop() in (0, -signal.SIGTERM), sp.stderr
    assert not any("Traceback" in line for line in sp.stderr), "\n".join(sp.stderr)


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Poll ``cond`` (a condition on the server's state) until it holds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.02)


# --- the rows --------------------------------------------------------------------------------


def body_over_limit(s: Served) -> None:
    for path in ENDPOINTS:
        # It claims 10 MB and sends none of it: the answer cannot have waited for the body.
        with connect(s.port) as sock:
            sock.sendall(request_head(path, s.port, "Content-Length: 10000000"))
            reply = read_reply(sock)
        assert reply.status == 413, reply
        assert "65,536 bytes" in error_text(path, reply.json()), reply
        assert "10,000,000 bytes" in error_text(path, reply.json())
        # A body of exactly the limit is fine (padded with JSON whitespace).
        raw = json.dumps(body_for(path)).encode()
        r = s.post_raw(path, raw + b" " * (MAX_BODY - len(raw)))
        assert r.status_code == 200, r.text


def chunked_over_limit(s: Served) -> None:
    for path in ENDPOINTS:
        with connect(s.port) as sock:
            sock.sendall(request_head(path, s.port, "Transfer-Encoding: chunked"))
            piece = b" " * 8192
            for _ in range(MAX_BODY // len(piece) + 1):  # past the limit, and never the end
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            reply = read_reply(sock)
        assert reply.status == 413, reply
        assert "more than that, the limit is 65,536 bytes" in error_text(path, reply.json())


def invalid_json(s: Served) -> None:
    bodies = {
        b"{not json": "not valid JSON",
        b"": "empty",
        b"[1, 2]": "must be a JSON object",
        b'{"model": "smollm2", "prompt": "cut sh': "not valid JSON",
        b"[" * 60_000: "nested too deeply",  # under the size limit; deeper than json's recursion
    }
    for path in ENDPOINTS:
        for raw, says in bodies.items():
            r = s.post_raw(path, raw)
            assert r.status_code == 400, (path, raw[:20], r.text)
            assert says in error_text(path, r.json()), (path, r.text)


def invalid_utf8(s: Served) -> None:
    for path in ENDPOINTS:
        good = json.dumps(body_for(path)).encode()
        raw = good.replace(b'"Hi"', b'"H\xff\xfei"')
        r = s.post_raw(path, raw)
        assert r.status_code == 400, r.text
        at = raw.index(b"\xff")
        says = f"the request body is not valid UTF-8: byte 0xff at offset {at}"
        assert error_text(path, r.json()) == says
        r = s.post_raw(path, good.replace(b'"Hi"', b'"H\\ud800i"'))
        assert r.status_code == 400, r.text
        assert "unpaired UTF-16 surrogate escape (\\ud800)" in error_text(path, r.json())
        r = s.post_raw(path, good.replace(b'"Hi"', b'"H\\ud83d\\ude42i \xc3\xa9"'))  # a pair: fine
        assert r.status_code == 200, r.text


WRONG_TYPES: list[tuple[str, dict[str, Any], str]] = [
    ("/api/generate", {"model": ["smollm2"]}, "invalid 'model': expected a string"),
    ("/api/generate", {"prompt": 5}, "invalid 'prompt': expected a string"),
    ("/api/generate", {"stream": "yes"}, "invalid 'stream': expected true or false"),
    ("/api/generate", {"options": [1]}, "invalid 'options': expected an object"),
    ("/api/generate", {"options": {"num_predict": "many"}}, "invalid 'num_predict'"),
    ("/api/generate", {"options": {"temperature": "hot"}}, "invalid 'temperature'"),
    ("/api/generate", {"context": ["a"]}, "invalid 'context'"),
    ("/api/chat", {"messages": "hi"}, "invalid 'messages'"),
    ("/api/chat", {"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ("/v1/completions", {"max_tokens": "many"}, "invalid 'max_tokens'"),
    ("/v1/completions", {"prompt": {"a": 1}}, "invalid 'prompt'"),
    ("/v1/completions", {"stop": 5}, "invalid 'stop'"),
    ("/v1/chat/completions", {"messages": [{"role": 7}]}, "messages[0].role"),
    ("/v1/chat/completions", {"temperature": "hot"}, "invalid 'temperature'"),
    ("/v1/chat/completions", {"stream_options": {"include_usage": "x"}}, "include_usage"),
]


def wrong_types(s: Served) -> None:
    for path, change, says in WRONG_TYPES:
        r = s.post(path, body_for(path) | change)
        assert r.status_code == 400, (path, change, r.text)
        assert says in error_text(path, r.json()), (path, r.text)


def numbers_that_overflow(s: Served) -> None:
    """Values that passed the type checks and then failed inside the engine thread, after the
    request was accepted: a 2**70 seed hung its request forever and leaked its batch slot; a
    temperature or repeat penalty of 1e-300 overflowed the logits to inf and failed every
    request sharing that decode step (500)."""
    bad = [
        ("/api/generate", {"options": {"seed": 2**70, "temperature": 0.5}}, "invalid 'seed'"),
        ("/v1/completions", {"seed": -(2**70), "temperature": 0.5}, "invalid 'seed'"),
        ("/api/chat", {"options": {"repeat_penalty": 1e-300, "temperature": 0.5}},
         "invalid 'repeat_penalty': expected 0 (off) or a number >= 0.001"),
    ]  # fmt: skip
    for path, change, says in bad:
        r = s.post(path, body_for(path, 4) | change)
        assert r.status_code == 400, (path, r.text)
        assert says in error_text(path, r.json())
    for path in ("/api/generate", "/v1/chat/completions"):  # tiny temperature: greedy
        greedy = s.post(path, body_for(path, 4)).json()
        opts = {"options": {"temperature": 1e-300}} if api_of(path) == "ollama" else {}
        r = s.post(path, body_for(path, 4, **opts) | ({} if opts else {"temperature": 1e-300}))
        assert r.status_code == 200, r.text
        assert text_of(path, r.json()) == text_of(path, greedy)
    assert s.http.post("/api/generate", json=body_for("/api/generate", 1)).status_code == 200


LONG = "word " * (CONTEXT - 30)
"""Tokenizes to a little under the context: room for a few more tokens."""


def max_tokens_over_context(s: Served) -> None:
    """Both APIs: run until the context is full and say ``length`` (the same in both)."""
    asks = {
        "/api/generate": {"prompt": LONG, "raw": True, "options": {"num_predict": 100_000}},
        "/v1/completions": {"prompt": LONG, "max_tokens": 100_000},
    }
    for path, change in asks.items():
        body = body_for(path) | change
        if api_of(path) == "ollama":
            body["options"] = {"temperature": 0} | change["options"]
        r = s.post(path, body)
        assert r.status_code == 200, r.text
        reason, out, prompt = finish_of(path, r.json())
        assert prompt < CONTEXT - 10, prompt
        assert (reason, out) == ("length", CONTEXT - prompt), r.json()


def prompt_over_context(s: Served) -> None:
    too_long = "word " * (CONTEXT + 50)
    for path in ENDPOINTS:
        chat = [{"role": "user", "content": too_long}]
        change = {"messages": chat} if "chat" in path else {"prompt": too_long}
        r = s.post(path, body_for(path) | change)
        assert r.status_code == 400, r.text
        says = error_text(path, r.json())
        assert "tokens, longer than the context of 512 tokens of model 'smollm2'" in says, says


def stalled_reader(s: Served) -> None:
    """A streaming client that reads nothing: logprobs make each line ~1.5 KB, so the stream
    soon outgrows its 4 KiB receive window and piles up on the server's side (measured: in the
    socket's kernel send buffer, which grows to ~4 MB on loopback; uvicorn's flow control
    would hold the handler past that). It is bounded by the context, where the job ends."""
    before = metrics(s.http)
    rss_before = s.rss
    body = json.dumps({"model": MODEL, "prompt": "Tell me a very long story.", "stream": True,
                       "logprobs": True, "top_logprobs": 20,
                       "options": {"temperature": 0, "num_predict": -1}}).encode()  # fmt: skip
    sock = connect(s.port, rcvbuf=4096)
    try:
        sock.sendall(request_head("/api/generate", s.port, f"Content-Length: {len(body)}") + body)
        gen = "vllm:generation_tokens_total"
        wait_for(lambda: metrics(s.http)[gen] >= before[gen] + 150, "150 tokens streamed")
        # Others are served beside it, in the same batch.
        s.assert_serving()
        assert metrics(s.http)[RUNNING] == 1, "the stalled stream left the batch early"
        assert s.rss - rss_before < 100 * MIB
    finally:
        close_hard(sock)
    # Its client gone, the job is cancelled (counted as an abort) and its slot freed.
    wait_for(lambda: metrics(s.http)[ABORTED] == before[ABORTED] + 1, "the job aborted")
    wait_for(lambda: metrics(s.http)[RUNNING] == 0, "its slot freed")
    s.assert_serving()


async def _flood(url: str, port: int, n: int, idle: int) -> list[tuple[str, int, Any, bytes]]:
    """``idle`` connections that send nothing, then ``n`` streaming requests at once."""
    quiet = [await asyncio.open_connection("127.0.0.1", port) for _ in range(idle)]
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as c:

        async def one(i: int) -> tuple[str, int, Any, bytes]:
            path = ENDPOINTS[i % 4]
            async with c.post(url + path, json=body_for(path, 2, stream=True)) as r:
                return path, r.status, r.headers.get("Retry-After"), await r.read()

        out = await asyncio.gather(*(one(i) for i in range(n)))
    for _, writer in quiet:
        writer.close()
    return list(out)


def five_hundred_connections(s: Served) -> None:
    rss_before = s.rss
    results = asyncio.run(_flood(s.sp.url, s.port, 500, idle=100))
    statuses = [status for _, status, _, _ in results]
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    assert statuses.count(200) >= MAX_BATCH + MAX_QUEUE and statuses.count(503) > 0
    for path, status, retry_after, data in results:
        if status == 503:
            assert retry_after is not None and int(retry_after) >= 1
            assert "server busy" in error_text(path, json.loads(data))
        elif api_of(path) == "ollama":
            last = json.loads(data.splitlines()[-1])
            assert last["done"] and last["eval_count"] == 2, last
        else:
            assert data.endswith(b"data: [DONE]\n\n") and b'"finish_reason":"length"' in data
    assert s.rss - rss_before < 300 * MIB
    wait_for(lambda: metrics(s.http)[RUNNING] == 0, "the batch empty")
    s.assert_serving()


def idle_connections(s: Served) -> None:
    t0 = time.monotonic()
    quiet = [connect(s.port) for _ in range(50)]  # connect, then nothing
    slowloris = connect(s.port)
    slowloris.sendall(b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
    body = json.dumps(body_for("/api/generate")).encode()
    head = request_head("/api/generate", s.port, f"Content-Length: {len(body)}")
    kept = connect(s.port)  # one request answered, then silence on the kept-alive connection
    kept.sendall(head + body)
    assert read_reply(kept).status == 200
    uploading = connect(s.port)  # headers in, the body still coming: a request in progress
    uploading.sendall(head + body[:10])
    s.assert_serving()
    for sock in [*quiet, slowloris, kept]:
        sock.settimeout(IDLE_TIMEOUT_S + 15)
        assert sock.recv(1) == b"", "the server should have closed this connection"
        sock.close()
    assert time.monotonic() - t0 >= IDLE_TIMEOUT_S - 0.1
    uploading.sendall(body[10:])  # after the others were dropped: it was never cut
    assert read_reply(uploading).status == 200
    uploading.close()
    s.assert_serving()


async def _fill_queue(url: str) -> None:
    async with aiohttp.ClientSession() as c:
        path = "/api/generate"
        admitted = []
        for _ in range(MAX_BATCH + MAX_QUEUE):  # each returns once its headers are in: admitted
            body = body_for(path, 48, stream=True, prompt="Count from 1 to 100.")
            admitted.append(await c.post(url + path, json=body))
            assert admitted[-1].status == 200
        for refused_path in ENDPOINTS:
            async with c.post(url + refused_path, json=body_for(refused_path)) as r:
                assert r.status == 503, await r.text()
                assert int(r.headers["Retry-After"]) >= 1
                says = error_text(refused_path, await r.json())
                assert says.startswith("server busy: 2 requests running and 4 waiting"), says
                assert "--max-queue 4" in says
        for r in admitted:  # the admitted ones are not disturbed: each runs to its end
            last = json.loads((await r.read()).splitlines()[-1])
            assert (last["done_reason"], last["eval_count"]) == ("length", 48), last
            r.release()


def _refused_503(s: Served) -> float:
    text = s.http.get("/metrics").text
    m = re.search(r'^llmtop_engine_http_errors_total\{[^}]*status="503"[^}]*\} (\S+)$', text, re.M)
    assert m, "the 503 counter is on /metrics"
    return float(m.group(1))


def queue_full(s: Served) -> None:
    before = _refused_503(s)
    asyncio.run(_fill_queue(s.sp.url))
    assert _refused_503(s) - before == len(ENDPOINTS)  # the operator sees the refusals
    s.assert_serving()


def record_meets_a_full_queue(s: Served) -> None:
    """llmtop measuring its own engine past its queue: 16 workers at once, 6 places."""
    db = s.tmp / "record.db"
    proc = run_llmtop("record", "--backend", "ollama", "--url", s.sp.url, "--model", MODEL,
                      "--requests", "16", "--concurrency", "16", "--max-tokens", "48",
                      "--temperature", "0", "--prompt", "Count from 1 to 100.",
                      "--sample-hz", "1", "--warmup", "0", "--json", "--db", str(db))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    overall = json.loads(proc.stdout)["overall"]
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(
            "select status, error_kind, http_status, error from requests"
        ).fetchall()
    ok = [r for r in rows if r[0] == "ok"]
    refused = [r for r in rows if r[0] == "error"]
    assert len(rows) == 16 and len(ok) >= MAX_BATCH + MAX_QUEUE and refused, rows
    for _, kind, http_status, error in refused:
        assert (kind, http_status) == ("http_status", 503), (kind, http_status)
        assert "server busy" in error and "(Retry-After: " in error, error
    assert overall["errors"] == len(refused) and overall["error_kinds"] == {
        "http_status": len(refused)}  # fmt: skip
    s.assert_serving()


def loopback_only(s: Served) -> None:
    assert s.sp.stdout[0] == (
        f"llmtop serve: listening on http://127.0.0.1:{s.port} (model {MODEL})")  # fmt: skip
    others = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
              if a.family == socket.AF_INET and not a.address.startswith("127.")]  # fmt: skip
    for address in others:  # none on some machines: then the ready line is all there is to see
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, s.port), timeout=5).close()


CASES: dict[str, Callable[[Served], None]] = {
    "body-over-limit": body_over_limit,
    "chunked-over-limit": chunked_over_limit,
    "invalid-json": invalid_json,
    "invalid-utf8": invalid_utf8,
    "wrong-types": wrong_types,
    "numbers-that-overflow": numbers_that_overflow,
    "max-tokens-over-context": max_tokens_over_context,
    "prompt-over-context": prompt_over_context,
    "stalled-reader": stalled_reader,
    "500-connections": five_hundred_connections,
    "idle-connections": idle_connections,
    "queue-full": queue_full,
    "record-meets-a-full-queue": record_meets_a_full_queue,
    "loopback-only": loopback_only,
}


def test_the_readme_lists_exactly_these_abuses():
    check_rows("test_faults_serve.py", CASES)


@pytest.mark.parametrize("case", params(CASES))
def test_serve_under_abuse(served: Served, case: Callable[[Served], None]):
    case(served)
    assert not any("Traceback" in line for line in served.sp.stderr), "\n".join(served.sp.stderr)


def test_retry_after_is_the_wait_for_a_place():
    """The estimate behind ``Retry-After``: the jobs ahead, ``max_batch`` at a time, at the
    recent time per job (the queue's wait is not counted as work)."""
    a = Admission(max_batch=2, max_queue=1)
    for _ in range(3):
        a.admit()
    with pytest.raises(ApiError) as e:
        a.admit()
    assert (e.value.status, e.value.headers) == (503, {"Retry-After": "1"})  # nothing finished
    s = 1_000_000_000
    a.release(Done("length", 5, 10, queue_ns=1 * s, prefill_ns=0, decode_ns=0, total_ns=5 * s))
    a.admit()  # the place it left is taken again
    with pytest.raises(ApiError) as e:
        a.admit()
    # 1 waiting + this one = 2 jobs ahead, 2 at a time, 4 s each: 4 s
    assert e.value.headers == {"Retry-After": "4"} and a.refused == 2
    a.release(Done("cancelled", 5, 0, 0, 0, 0, 1))  # a client that left frees its place too
    a.admit()
