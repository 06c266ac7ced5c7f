"""A server with known timings reads back as those timings (issue 5, "Done when").

The fake server runs in its own process with TTFT 200 ms, ITL 20 ms, 64 tokens, one token per
chunk or four. Each backend's events are judged against the server's own log of when it got
each request and wrote each chunk (support/wire_truth.py; perf_counter_ns is CLOCK_MONOTONIC in
both processes): exact counts, nothing read before it was written, TTFT and TPOT from the right
chunks, and closeness that a busy machine cannot break. The issue's mean absolute error (< 2 ms
at concurrency 1, < 5 ms at 64) is a quiet machine's number: bench/accuracy.py prints it.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
from support import wire_truth
from support.collect import Sink
from support.servers import Behavior, FakeServer, raise_priority, restore_priority

from llmtop.collectors.ollama import OllamaBackend
from llmtop.collectors.openai_compat import OpenAIBackend
from llmtop.core.metrics import itl_ms, ttft_ms
from llmtop.core.requests import GenerationRequest

pytestmark = pytest.mark.slow

TTFT, ITL, N = 200.0, 20.0, 64
MODELS = {
    "k1": Behavior(ttft_ms=TTFT, itl_ms=ITL, tokens=N),
    "k4": Behavior(ttft_ms=TTFT, itl_ms=ITL, tokens=N, tokens_per_chunk=4),
    "queued": Behavior(ttft_ms=20, itl_ms=1, tokens=2),
}


@pytest.fixture(scope="module")
def server():
    with FakeServer(MODELS, process=True, realtime=True) as srv:
        yield srv


@pytest.fixture
def boosted():
    """The client at the priority the server has, for the length of one test: on a machine
    shared with other test suites, neither side should be left waiting for a core."""
    got = raise_priority()
    yield got
    restore_priority(got)


async def drive(
    api: str, srv: FakeServer, model: str, concurrency: int, rounds: int
) -> tuple[Sink, dict]:
    srv.log(clear=True)
    sink = Sink()
    backend = OllamaBackend(srv.url) if api == "ollama" else OpenAIBackend(srv.openai_url)
    async with backend as b:
        for r in range(rounds):
            reqs = [
                GenerationRequest(
                    1, r * 1000 + i, model, f"req-{r * 1000 + i} tell me", max_tokens=N
                )
                for i in range(concurrency)
            ]
            await asyncio.gather(*(b.stream(q, sink) for q in reqs))
    logs = {}
    for log in srv.log():
        body = log.body
        prompt = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
        logs[int(prompt.split()[0].removeprefix("req-"))] = log
    return sink, logs


CASES = [
    # api, model (tokens per chunk), concurrency, requests in a sequential round
    ("ollama", "k1", 1, 2),
    ("openai", "k4", 1, 2),
    ("ollama", "k1", 64, 1),
    ("openai", "k4", 64, 1),
]


@pytest.mark.parametrize(("api", "model", "concurrency", "rounds"), CASES)
async def test_known_timings_read_back(server, boosted, api, model, concurrency, rounds):
    sink, logs = await drive(api, server, model, concurrency, rounds)
    assert len(logs) == concurrency * rounds
    k = MODELS[model].tokens_per_chunk
    measured = {}
    for rid in logs:
        fin = sink.finished(rid)
        toks = sink.tokens(rid)
        # exact counts: the server's, and the chunks we saw
        assert (fin.output_tokens, fin.chunks, fin.tokens_counted) == (N, N // k, N // k)
        assert (toks[0].t_ns, toks[-1].t_ns) == (fin.t_first_ns, fin.t_last_ns)
        # a chunk of k tokens is k tokens spread over its gap: k equal values per gap
        gaps = itl_ms([t.t_ns for t in toks], [t.n_tokens for t in toks], fin.output_tokens)
        assert len(gaps) == N - k
        assert all(len(set(gaps[i : i + k])) == 1 for i in range(0, len(gaps), k))
        measured[rid] = wire_truth.Measured(
            fin.t_start_ns, [t.t_ns for t in toks], fin.output_tokens,
            ttft_ms(fin.t_start_ns, fin.t_first_ns),
        )  # fmt: skip
    print(wire_truth.check(measured, logs))


async def test_t0_is_when_the_request_hit_the_wire_not_when_it_was_asked_for(server, boosted):
    """64 requests asked for at once through a pool of 8 connections: most wait for a connection.
    Each t0 must be its own departure, so TTFT stays the server's 20 ms however long the request
    queued in the client. Exact, by causality: on one kept-alive connection (the server logs the
    client's port), a request can only leave after the one before it was answered, so its t0
    comes after the server began writing that answer's last chunk. A t0 taken when the request
    was asked for comes before."""
    server.log(clear=True)
    sink = Sink()
    async with OllamaBackend(server.url, max_connections=8) as b:
        reqs = [GenerationRequest(1, i, "queued", f"req-{i} hi") for i in range(64)]
        t_ask = time.perf_counter_ns()
        await asyncio.gather(*(b.stream(q, sink) for q in reqs))
    logs = {int(log.body["messages"][-1]["content"].split()[0][4:]): log for log in server.log()}
    t0 = {i: sink.finished(i).t_start_ns for i in range(64)}
    queued = (max(t0.values()) - t_ask) / 1e6
    assert queued > 7 * 20  # the last requests waited for seven others to finish first
    by_connection: dict[tuple, list[int]] = {}
    for i, log in sorted(logs.items(), key=lambda kv: kv[1].t_recv_ns):
        assert log.peer is not None
        by_connection.setdefault(tuple(log.peer), []).append(i)
    assert len(by_connection) <= 8 and sum(map(len, by_connection.values())) == 64
    for ids in by_connection.values():
        for before, after in itertools.pairwise(ids):
            assert t0[after] > logs[before].sends[-1][0], (before, after)
    measured = {}
    for i in range(64):
        first = sink.finished(i).t_first_ns
        arrivals = [t.t_ns for t in sink.tokens(i)]
        measured[i] = wire_truth.Measured(t0[i], arrivals, 2, ttft_ms(t0[i], first))
    print(f"last departure {queued:.1f} ms after asking; " + wire_truth.check(measured, logs))
