"""A server with known timings reads back as those timings (issue 5, "Done when").

The fake server runs in its own process with TTFT 200 ms, ITL 20 ms, 64 tokens, one token per
chunk or four. Three things are checked, so a failure says where the error came from:
the server kept its schedule (its logged send times against the schedule), our clock reads what
the server sent (arrival minus send time; perf_counter_ns is CLOCK_MONOTONIC in both processes),
and the end-to-end numbers (TTFT, ITL via collectors.metrics) are within the issue's mean
absolute error: < 2 ms at concurrency 1, < 5 ms at concurrency 64, with exact token counts.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest
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


def mae(values: list[float], target: float) -> float:
    return statistics.fmean(abs(v - target) for v in values)


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
    # api, model (tokens per chunk), concurrency, requests in a sequential round, MAE limit (ms)
    ("ollama", "k1", 1, 2, 2.0),
    ("openai", "k4", 1, 2, 2.0),
    ("ollama", "k1", 64, 1, 5.0),
    ("openai", "k4", 64, 1, 5.0),
]
ATTEMPTS = 3
"""This machine is shared (2 cores, other test suites running). Server and client run at
real-time priority where allowed, and a case passes when one of up to 3 rounds is within the
limits; counts and causality are asserted on every round, and a systematic error fails them all."""


def judge(sink: Sink, logs: dict, k: int, limit: float) -> tuple[bool, str]:
    """Assert what must hold every time; return whether this round is within the limits."""
    ttfts, itls, lateness, delivery = [], [], [], []
    for rid, log in logs.items():
        fin = sink.finished(rid)
        toks = sink.tokens(rid)
        # exact counts: the server's, and the chunks we saw
        assert (fin.output_tokens, fin.chunks, fin.tokens_counted) == (N, N // k, N // k)
        assert len(log.sends) == N // k
        lateness += [(t - due) / 1e6 for (t, _), due in zip(log.sends, log.scheduled, strict=True)]
        delivery += [(tok.t_ns - t) / 1e6 for tok, (t, _) in zip(toks, log.sends, strict=True)]
        ttfts.append(ttft_ms(fin.t_start_ns, fin.t_first_ns))
        itls += itl_ms([t.t_ns for t in toks], [t.n_tokens for t in toks], fin.output_tokens)
    assert len(itls) == len(logs) * (N - k)
    assert min(delivery) > 0 and min(lateness) >= 0  # nothing arrives before it was sent
    report = (
        f"server late mean {statistics.fmean(lateness):.3f} max {max(lateness):.3f} ms; "
        f"delivery mean {statistics.fmean(delivery):.3f} max {max(delivery):.3f} ms; "
        f"TTFT MAE {mae(ttfts, TTFT):.3f} ms; ITL MAE {mae(itls, ITL):.3f} ms"
    )
    ok = (
        statistics.fmean(lateness) < limit / 4  # the server kept its schedule
        and statistics.fmean(delivery) < limit / 2  # we read what it sent when it sent it
        and mae(ttfts, TTFT) < limit  # end to end, against the nominal timings
        and mae(itls, ITL) < limit
    )
    return ok, report


@pytest.mark.parametrize(("api", "model", "concurrency", "rounds", "limit"), CASES)
async def test_known_timings_read_back(server, boosted, api, model, concurrency, rounds, limit):
    reports = []
    for _ in range(ATTEMPTS):
        sink, logs = await drive(api, server, model, concurrency, rounds)
        assert len(logs) == concurrency * rounds
        ok, report = judge(sink, logs, MODELS[model].tokens_per_chunk, limit)
        print(report)
        reports.append(report)
        if ok:
            return
    pytest.fail("no round within the limits:\n" + "\n".join(reports))


async def test_t0_is_when_the_request_hit_the_wire_not_when_it_was_asked_for(server, boosted):
    """64 requests asked for at once through a pool of 8 connections: most wait for a connection.
    Each t0 must be its own departure (the server had it within a few ms), so TTFT stays the
    server's 20 ms however long the request queued in the client."""
    server.log(clear=True)
    sink = Sink()
    async with OllamaBackend(server.url, max_connections=8) as b:
        reqs = [GenerationRequest(1, i, "queued", f"req-{i} hi") for i in range(64)]
        t_ask = time.perf_counter_ns()
        await asyncio.gather(*(b.stream(q, sink) for q in reqs))
    logs = {int(log.body["messages"][-1]["content"].split()[0][4:]): log for log in server.log()}
    waits = [(logs[i].t_recv_ns - sink.started(i).t_ns) / 1e6 for i in range(64)]
    queued = (max(sink.started(i).t_ns for i in range(64)) - t_ask) / 1e6
    ttfts = [ttft_ms(sink.finished(i).t_start_ns, sink.finished(i).t_first_ns) for i in range(64)]
    print(
        f"request to server: max {max(waits):.3f} ms; last departure {queued:.1f} ms after asking"
    )
    assert queued > 7 * 20  # the last requests waited for seven others to finish first
    assert min(waits) > 0 and max(waits) < 3.0  # yet each t0 is its own departure
    assert max(abs(t - 20.0) for t in ttfts) < 5.0
