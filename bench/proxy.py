"""What ``llmtop proxy`` costs its clients: added TTFT at 64 streams, and tokens/s on one core.

Whole-process: the proxy is the real ``llmtop proxy`` (storing every token in SQLite, serving
``/llmtop/metrics``). The fake server (its own process) is alone on one core; the proxy, all its
threads, shares the other with this process's minimal aiohttp client, so the direct requests are
measured on an otherwise idle pair and the proxy's CPU lands in the proxied numbers. Every
process runs at normal priority, as the proxy is deployed; with ``--realtime`` the TTFT rounds
run all three at real-time priority (SCHED_FIFO) when allowed (of the proxy, its relay thread
only: its writer and samplers there would hold the relay off for whole flushes), which keeps
other programs out of sub-ms differences but makes the client and the relay, sharing a core,
wait for each other's whole loop iteration: p50 +0.37 to +0.65 ms there against +0.20 to +0.29
at normal priority in the same hour. Same run, interleaved rounds:

- TTFT: 64 streams (started spread out, a short random pause between requests, as independent
  clients; in lockstep 64 requests land in one millisecond and the numbers measure that burst's
  queue), each sending requests one after another to a model with TTFT 100 ms and ITL 10 ms
  (16 tokens), directly and through the proxy. TTFT is taken by the client from the request
  written (aiohttp's chunk-sent trace, as llmtop's own t0) to the first content line. Added =
  proxied minus direct, at p50 and p99; the median round is shown, and every round.
- Accuracy: each request the proxy stored (``--store-prompts``: prompts pair it with the fake
  server's log) against the server's own TTFT (its log: the request's arrival to the first
  token's send); issue 18 asks for every stored TTFT within 1 ms.
- Throughput: 64 streams of a server that floods tokens as fast as the sockets take them,
  through the proxy. Tokens/s as the client receives them (wall), and the proxy's CPU per token
  (psutil, all its threads: relay, parsers, events, the SQLite writer), whose inverse is what
  one core passes when the proxy is the bottleneck; the median round (the fastest one once read
  0.7 us per token, unexplained, where every other round reads 3-3.7).

Prints one line; the goals (issue 18): added TTFT <= 0.3 ms at p50 and <= 1 ms at p99, and
>= 50,000 tokens/s on one core. On the 2-core machine these were written on, at normal priority,
five runs: added TTFT p50 +0.20 to +0.29 ms, p99 +0.16 to +2.4 ms a round (within 1 ms in under
half the rounds), stored TTFT vs the server's |diff| p50 0.07 ms, p99 0.86-0.98 ms, max 2-2.9 ms,
2.9-3.3 us of proxy CPU per token (300,000-340,000 tokens/s per core); an hour later, the
machine slower (direct p50 +0.2 ms), p50 read +0.6 to +0.8 ms: compare within a run. Before the
proxy ran on uvloop, stamped tokens in its protocol callback, read request bodies after sending
them, and left no cyclic garbage (same run, 6 rounds, load ~2-3): p50 +0.52 -> +0.37 ms, p99
median +2.7 -> +2.1 ms, stored |diff| p99 3.0 -> 1.6 ms, max 38 -> 15 ms. For scale, a bare relay
(protocols, no parsing) adds +0.08 to +0.16 ms at p50 here (uvloop, asyncio).

    .venv/bin/python bench/proxy.py [--streams N] [--rounds R] [--requests K] [--flood-tokens T]
                                    [--no-pin] [--realtime]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.proxy import ProxyProcess, start_proxy
from support.servers import Behavior, FakeServer, raise_priority, restore_priority

from llmtop.core.metrics import percentile

TTFT_MS, ITL_MS, TOKENS = 100.0, 10.0, 16
ids = itertools.count()


def pin_all_threads(pid: int, cores: set[int]) -> None:
    """Pin every thread of ``pid`` (the writer thread was started before we could pin)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), cores)


def set_realtime(pid: int, on: bool, threads: str = "relay") -> bool:
    """SCHED_FIFO (or back to normal) for the proxy's relay thread, its main one (``threads=
    "all"``: every thread); ``False`` if not allowed. Only the relay: at real-time priority its
    writer thread could not be preempted by the relay for a whole ~2 ms flush, an inversion no
    proxy at normal priority has (there the woken relay preempts the writer)."""
    policy, prio = (os.SCHED_FIFO, 1) if on else (os.SCHED_OTHER, 0)
    tids = os.listdir(f"/proc/{pid}/task") if threads == "all" else [str(pid)]
    try:
        for tid in tids:
            os.sched_setscheduler(int(tid), policy, os.sched_param(prio))
    except OSError:
        return False
    return True


async def _on_sent(session: object, ctx: Any, params: object) -> None:
    ctx.trace_request_ctx["t0"] = time.perf_counter_ns()


async def ttft_round(url: str, streams: int, requests: int) -> list[float]:
    """TTFT (ms) of ``streams`` x ``requests`` chat requests, one after another per stream."""
    trace = aiohttp.TraceConfig()
    trace.on_request_chunk_sent.append(_on_sent)
    out: list[float] = []

    async def stream(session: aiohttp.ClientSession, rng: random.Random) -> None:
        # Streams start spread over one request's length and pause a little between requests,
        # as independent clients do; in lockstep, 64 requests would land in the same
        # millisecond and measure a burst's queue instead of the proxy.
        await asyncio.sleep(rng.uniform(0, (TTFT_MS + TOKENS * ITL_MS) / 1000))
        for _ in range(requests):
            await asyncio.sleep(rng.uniform(0, 0.02))
            ctx: dict[str, int] = {}
            # a prompt of its own, so the stored request and the server's log can be paired
            body = {"model": "timed", "messages": [{"role": "user", "content": f"go {next(ids)}"}]}
            async with session.post(url + "/api/chat", json=body, trace_request_ctx=ctx) as r:
                first = None
                async for line in r.content:
                    if first is None and b'"content":" tok"' in line:
                        first = time.perf_counter_ns()
                assert first is not None, "no content"
                out.append((first - ctx["t0"]) / 1e6)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as session:
        await asyncio.gather(*(stream(session, random.Random(i)) for i in range(streams)))
    return out


def stored_vs_server(fake: FakeServer, pp: ProxyProcess, expected: int) -> list[float]:
    """|stored TTFT - the server's own| (ms) of each request the proxy timed: the server's is
    from its log (the request's arrival to its first token's send)."""
    server = {
        x.body["messages"][-1]["content"]: (x.sends[0][0] - x.t_recv_ns) / 1e6
        for x in fake.log()
        if x.model == "timed" and x.sends
    }
    rows = pp.wait_rows(
        "select prompt, ttft_ms from requests where model = 'timed' and status != 'running'",
        until=lambda rows: len(rows) >= expected,
    )
    diffs = []
    for prompt, ttft in rows:
        content = json.loads(str(prompt))["messages"][-1]["content"]
        if content in server and ttft is not None:
            diffs.append(abs(float(ttft) - server[content]))  # type: ignore[arg-type]
    return diffs


async def flood(url: str, streams: int, tokens: int) -> tuple[int, float]:
    """Lines received and seconds, ``streams`` floods of ``tokens`` tokens each."""
    body = {"model": "flood", "messages": [{"role": "user", "content": "go"}],
            "options": {"num_predict": tokens}}  # fmt: skip
    counts = [0] * streams

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        async with session.post(url + "/api/chat", json=body) as r:
            n = 0
            while data := await r.content.readany():
                n += data.count(b"\n")
            counts[i] = n

    t = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(one(session, i) for i in range(streams)))
    return sum(counts), time.perf_counter() - t


def cpu_s(pp: ProxyProcess) -> float:
    t = psutil.Process(pp.proc.pid).cpu_times()
    return t.user + t.system


def ttft_rounds(args: argparse.Namespace, fake: FakeServer, pp: ProxyProcess, realtime: bool):
    """``(priority, [(added p50, added p99, direct p50, direct p99) per round])``."""
    asyncio.run(ttft_round(pp.url, 4, 1))  # warm: connections, imports, first writes
    # Real-time priority (SCHED_FIFO) for all three during the TTFT rounds (mostly idle:
    # nothing starves), so that the other load of a shared machine does not land in sub-ms
    # differences. The proxy and the client share a core and, both FIFO, wait for each other's
    # loop iteration: that contention is in the proxied numbers, as it would be on a host
    # whose clients run beside the proxy.
    priority = "normal"
    if realtime and set_realtime(pp.proc.pid, True):
        priority = raise_priority()
    # This client's own collector is off during the rounds: its full passes (~13 ms here) land
    # at random in the direct or the proxied p99.
    gc.collect()
    gc.freeze()
    gc.disable()
    rounds = []
    try:
        for _ in range(args.rounds):
            direct = asyncio.run(ttft_round(fake.url, args.streams, args.requests))
            proxied = asyncio.run(ttft_round(pp.url, args.streams, args.requests))
            d50, d99 = percentile(direct, 50) or 0.0, percentile(direct, 99) or 0.0
            p50, p99 = percentile(proxied, 50) or 0.0, percentile(proxied, 99) or 0.0
            rounds.append((p50 - d50, p99 - d99, d50, d99))
    finally:
        gc.enable()
        set_realtime(pp.proc.pid, False)  # floods run at normal priority: they take a core
        restore_priority(priority)
    return priority, rounds


def flood_rounds(args: argparse.Namespace, fake: FakeServer, pp: ProxyProcess):
    """``[(tokens/s through the proxy, proxy CPU s per token, tokens/s direct)]``."""
    out = []
    for _ in range(args.rounds):
        direct_tok, direct_s = asyncio.run(flood(fake.url, args.streams, args.flood_tokens))
        before = cpu_s(pp)
        tok, wall = asyncio.run(flood(pp.url, args.streams, args.flood_tokens))
        used = max(cpu_s(pp) - before, 0.01)  # (psutil counts in 10 ms ticks)
        out.append((tok / wall, used / tok, direct_tok / direct_s))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=8, help="per stream and round (TTFT)")
    ap.add_argument("--flood-tokens", type=int, default=4000, help="per stream (throughput)")
    ap.add_argument("--no-pin", action="store_true", help="leave every process on every core")
    ap.add_argument("--realtime", action="store_true",
                    help="run the TTFT rounds at real-time priority (SCHED_FIFO) when allowed")  # fmt: skip
    args = ap.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    # The fake server alone on one core; the proxy on the client's: direct requests are
    # measured on an otherwise idle pair, and the proxy's own CPU lands in its numbers.
    server_core, client_core = {cores[0]}, {cores[-1]}
    if args.no_pin:
        server_core = client_core = set(cores)
    models = {
        "timed": Behavior(ttft_ms=TTFT_MS, itl_ms=ITL_MS, tokens=TOKENS),
        "flood": Behavior(tokens=10**7, lines_per_write=16, log_sends=False),
    }
    os.sched_setaffinity(0, client_core)
    realtime = args.realtime
    with (
        tempfile.TemporaryDirectory() as tmp,
        FakeServer(models, process=True, cpus=server_core, realtime=realtime) as fake,
        start_proxy(fake.url, Path(tmp) / "bench.db", "--store-prompts") as pp,
    ):
        pin_all_threads(pp.proc.pid, client_core)
        priority, added = ttft_rounds(args, fake, pp, realtime)
        accuracy = stored_vs_server(fake, pp, 4 + args.rounds * args.streams * args.requests)
        floods = flood_rounds(args, fake, pp)
        pp.stop()
    mid = sorted(added, key=lambda a: a[0])[len(added) // 2]  # the median round (by p50)
    each = "; ".join(f"{a[0]:+.3f}/{a[1]:+.3f}" for a in added)
    tps, cpu_per_tok, direct_tps = sorted(floods)[len(floods) // 2]  # the median round
    print(
        f"proxy, {args.streams} streams (proxy and client {priority}, fake {fake.priority}): "
        "TTFT added "
        f"p50 {mid[0]:+.3f} ms, p99 {mid[1]:+.3f} ms (median round; direct p50 {mid[2]:.2f} ms, "
        f"p99 {mid[3]:.2f} ms; each round p50/p99: {each}); throughput {tps:,.0f} tok/s "
        f"through it (direct {direct_tps:,.0f}), proxy CPU {cpu_per_tok * 1e6:.1f} us/token = "
        f"{1 / cpu_per_tok:,.0f} tok/s per core; stored TTFT vs the server's own over "
        f"{len(accuracy)} requests: |diff| p50 {percentile(accuracy, 50) or 0:.3f} ms, p99 "
        f"{percentile(accuracy, 99) or 0:.3f} ms, max {max(accuracy, default=0):.3f} ms (goals: "
        "+0.3 ms p50, +1 ms p99, >= 50,000 tok/s on one core, stored TTFT within 1 ms)"
    )


if __name__ == "__main__":
    main()
