"""Fidelity: how far llmtop's TTFT and ITL are from the truth, at 1, 64, 256 and 1,024 streams,
beside a minimal aiohttp loop measured in the same run.

The truth is the fake server's own log (tests/support/servers.py, its own process): when each
request's bytes arrived, and when each token's write began. Server and clients read the same
clock (``perf_counter_ns``, CLOCK_MONOTONIC, system-wide on Linux), and each request is matched
to its log entry by its prompt ("Request N."). Per request:

- departure lag = server arrival - client t0 (llmtop takes t0 as the request is written);
- read lag = client stamp of the first token - server's write of it;
- TTFT error = client TTFT - server TTFT (first write - arrival) = departure + read lag;
- ITL error = |client gap - server gap| for every pair of consecutive tokens;
- tokens exact = the client counted what the server sent.

llmtop runs as a user runs it: ``llmtop record`` (a whole process: samplers, writer, every token
stored; ``--workers`` from 256 streams up, ``auto`` by default). The minimal loop is ~40 lines a
performance engineer would write (one process, t0 before ``session.post``). Both are pinned to
the same client cores, one after the other; the server gets the other cores. Prints one line per
stream count and the load average beside it (the machine may be shared: compare within a line).

    .venv/bin/python bench/fidelity.py [--streams 1,64,256,1024] [--workers auto]
                                       [--ttft-ms 200] [--itl-ms 20] [--tokens 64]
                                       [--staggered] [--realtime-clients]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.servers import Behavior, FakeServer, RequestLog, raise_priority

MODEL = "timed"
PROMPT = re.compile(r"Request (\d+)\.")


# --- the minimal loop (runs as its own process: ``--minimal URL N TOKENS OUT``) -----------------


async def _minimal(url: str, streams: int, tokens: int, gap_s: float) -> dict[int, list[int]]:
    import aiohttp

    out: dict[int, list[int]] = {}

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        if gap_s:
            await asyncio.sleep((i - 1) * gap_s)
        body = {"model": MODEL, "stream": True, "max_tokens": tokens,
                "messages": [{"role": "user", "content": f"Request {i}. go"}]}  # fmt: skip
        stamps = [time.perf_counter_ns()]  # t0, as such a loop takes it: before the post
        async with session.post(url + "/chat/completions", json=body) as resp:
            async for line in resp.content:
                t = time.perf_counter_ns()
                if line.startswith(b"data: "):
                    data = line[6:].strip()
                    if data == b"[DONE]":
                        break
                    choices = json.loads(data)["choices"]
                    if choices and choices[0]["delta"].get("content"):
                        stamps.append(t)
        out[i] = stamps

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(one(session, i) for i in range(1, streams + 1)))
    return out


def _pin(cores: set[int], realtime: bool) -> Any:
    def setup() -> None:
        os.sched_setaffinity(0, cores)
        if realtime:
            raise_priority()

    return setup


def run_minimal(
    url: str, streams: int, tokens: int, cores: set[int], realtime: bool, gap_s: float
) -> dict[int, list[int]]:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [sys.executable, __file__, "--minimal", url, str(streams), str(tokens), f.name,
               str(gap_s)]  # fmt: skip
        subprocess.run(cmd, check=True, preexec_fn=_pin(cores, realtime))
        return {int(k): v for k, v in json.loads(Path(f.name).read_text()).items()}


# --- llmtop record ----------------------------------------------------------------------------


def run_llmtop(
    url: str,
    streams: int,
    tokens: int,
    workers: str,
    cores: set[int],
    db: Path,
    realtime: bool,
    gap_s: float,
) -> tuple[dict[int, list[int]], dict[str, Any]]:
    """Each request's ``[t0, token stamps...]`` by id, and the run's ``client`` self-check."""
    exe = os.environ.get("LLMTOP_EXE") or str(Path(sys.executable).parent / "llmtop")
    cmd = [exe, "record", "--backend", "openai", "--url", url, "--model", MODEL,
           "--requests", str(streams), "--concurrency", str(streams), "--max-tokens", str(tokens),
           "--warmup", "0", "--unique-prompts", "--db", str(db), "--json"]  # fmt: skip
    if workers != "1":
        cmd += ["--workers", workers]
    if gap_s:
        cmd += ["--rate", f"{1 / gap_s:.6f}", "--arrival", "constant"]
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True,
                          preexec_fn=_pin(cores, realtime))  # fmt: skip
    client = json.loads(proc.stdout)["client"]
    out: dict[int, list[int]] = {}
    with sqlite3.connect(db) as c:
        for rid, t0 in c.execute("select id, t_start_ns from requests"):
            out[rid] = [t0]
        for rid, t in c.execute("select request_id, t_ns from tokens order by request_id, idx"):
            out[rid].append(t)
    return out, client


# --- the comparison -----------------------------------------------------------------------------


def errors(stamps: dict[int, list[int]], logs: dict[int, RequestLog]) -> dict[str, Any]:
    """Departure, read and TTFT errors (ms), ITL error (ms), token exactness, against the log."""
    dep, read, ttft, itl = [], [], [], []
    exact = 0
    for rid, s in stamps.items():
        log = logs[rid]
        sends = [t for t, n in log.sends for _ in range(n)]  # one stamp per token
        t0, got = s[0], s[1:]
        exact += len(got) == len(sends)
        if not got or not sends:
            continue
        dep.append((log.t_recv_ns - t0) / 1e6)
        read.append((got[0] - sends[0]) / 1e6)
        ttft.append(dep[-1] + read[-1])
        for i in range(1, min(len(got), len(sends))):
            itl.append(abs((got[i] - got[i - 1]) - (sends[i] - sends[i - 1])) / 1e6)
    return {"departure": dep, "read": read, "ttft": ttft, "itl": itl, "exact": exact,
            "n": len(stamps)}  # fmt: skip


def p99(values: list[float]) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[98]
        if len(values) > 1
        else values[0]
    )


def show(name: str, e: dict[str, Any]) -> str:
    t, r, d, i = e["ttft"], e["read"], e["departure"], e["itl"]
    return (
        f"{name}: TTFT error {statistics.fmean(t):.2f}/{p99(t):.2f} ms (read {statistics.fmean(r):.2f}"
        f"/{p99(r):.2f}, departure {statistics.fmean(d):.2f}/{p99(d):.2f}), ITL error "
        f"{statistics.fmean(i):.3f} ms, tokens exact {e['exact']}/{e['n']}"
    )


def main() -> None:
    if len(sys.argv) == 7 and sys.argv[1] == "--minimal":
        _, _, url, streams, tokens, out, gap = sys.argv
        stamps = asyncio.run(_minimal(url, int(streams), int(tokens), float(gap)))
        Path(out).write_text(json.dumps(stamps))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", default="1,64,256,1024")
    ap.add_argument("--workers", default="auto", help="llmtop's --workers from 256 streams up")
    ap.add_argument("--ttft-ms", type=float, default=200.0)
    ap.add_argument("--itl-ms", type=float, default=20.0)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--server-cores", default="", help="default: the first allowed core")
    ap.add_argument(
        "--staggered",
        action="store_true",
        help="spread the starts evenly over one request's length (constant arrivals) instead of "
        "all at once: the server's single thread then never reads a burst of N requests",
    )
    ap.add_argument(
        "--realtime-clients",
        action="store_true",
        help="run both clients at real-time priority (SCHED_FIFO, else nice -10), as the server "
        "always is: on a shared machine, what is left is the clients' own cost",
    )
    args = ap.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    server = {int(c) for c in args.server_cores.split(",") if c} or {cores[0]}
    client = set(cores) - server or set(cores)
    beh = Behavior(tokens=args.tokens, ttft_ms=args.ttft_ms, itl_ms=args.itl_ms)
    with FakeServer({MODEL: beh}, process=True, cpus=server, realtime=True) as srv, \
            tempfile.TemporaryDirectory() as tmp:  # fmt: skip
        for streams in [int(s) for s in args.streams.split(",")]:
            load = os.getloadavg()[0]
            workers = args.workers if streams >= 256 else "1"
            srv.log(clear=True)
            rt = args.realtime_clients
            length_s = (args.ttft_ms + args.itl_ms * (args.tokens - 1)) / 1000
            gap = length_s / streams if args.staggered and streams > 1 else 0.0
            ours, check = run_llmtop(srv.openai_url, streams, args.tokens, workers, client,
                                     Path(tmp) / f"f{streams}.db", rt, gap)  # fmt: skip
            logs = {int(PROMPT.search(json.dumps(r.body)).group(1)): r for r in srv.log(clear=True)}  # type: ignore[union-attr]
            mine = errors(ours, logs)
            floor = run_minimal(srv.openai_url, streams, args.tokens, client, rt, gap)
            logs = {int(PROMPT.search(json.dumps(r.body)).group(1)): r for r in srv.log(clear=True)}  # type: ignore[union-attr]
            theirs = errors(floor, logs)
            name = f"llmtop record --workers {check['workers']}"
            print(
                f"fidelity {streams} streams (TTFT {args.ttft_ms:g} ms, ITL {args.itl_ms:g} ms, "
                f"{args.tokens} tokens; server cpu{sorted(server)} {srv.priority}, clients cpu"
                f"{sorted(client)}{' realtime' if rt else ''}; "
                f"{'staggered' if gap else 'all at once'}; load {load:.2f}->{os.getloadavg()[0]:.2f}): "
                f"{show(name, mine)}; loop lag p99 "
                f"{check['loop_lag_ms_p99']:.2f} ms; {show('minimal aiohttp', theirs)}",
                flush=True,
            )


if __name__ == "__main__":
    main()
