"""Collector throughput: tokens/s ingested and CPU per 1,000 tokens of our backend path (backend +
EventWriter storing every token in SQLite, as ``llmtop record`` does by default) beside a minimal
aiohttp client (stream, parse, timestamp, nothing else), and ``llmtop record`` itself.

The fake server (tests/support/servers.py, its own process) floods 1, 64 and 256 concurrent
streams as fast as it can; it is pinned to one core and this process (client and writer thread)
to another. Each measurement is repeated, the two clients interleaved; the best of each is kept.
Prints one line; the goal (issue 5): ours >= 0.6x the minimal client's tokens/s at <= 2x its CPU.

    .venv/bin/python bench/collector.py [--api ollama|openai] [--tokens N] [--repeat R]
                                        [--no-record] [--with-httpx]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.servers import Behavior, FakeServer

from llmtop.collectors.backends import make_backend
from llmtop.core.events import RequestFinished
from llmtop.core.requests import GenerationRequest
from llmtop.storage.writer import EventWriter, RunInfo

MODEL = "flood"


@dataclass
class Result:
    tokens: int
    wall_s: float
    cpu_s: float

    @property
    def tok_s(self) -> float:
        return self.tokens / self.wall_s

    @property
    def us_per_tok(self) -> float:
        return self.cpu_s / self.tokens * 1e6


async def measure(fn: Callable[[], Awaitable[int]]) -> Result:
    cpu, wall = (
        time.process_time(),
        time.perf_counter(),
    )  # process_time: every thread, the writer's too
    tokens = await fn()
    return Result(tokens, time.perf_counter() - wall, time.process_time() - cpu)


# --- the minimal client: the floor ------------------------------------------------------------


def minimal_request(api: str, per_stream: int) -> tuple[str, dict[str, Any]]:
    """The path and body both minimal clients send."""
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "go"}],
                            "stream": True}  # fmt: skip
    if api == "ollama":
        return "/api/chat", body | {"options": {"num_predict": per_stream}}
    return "/v1/chat/completions", body | {"max_tokens": per_stream}


async def minimal_client(url: str, api: str, streams: int, per_stream: int) -> int:
    """~50 lines a performance engineer would write: stream, parse, timestamp, nothing else."""
    path, body = minimal_request(api, per_stream)
    counts = [0] * streams

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        stamps: list[int] = []
        async with session.post(url + path, json=body) as resp:
            async for line in resp.content:
                t = time.perf_counter_ns()
                if api == "ollama":
                    obj = json.loads(line)
                    if obj.get("done"):
                        break
                    if obj["message"]["content"]:
                        stamps.append(t)
                elif line.startswith(b"data: "):
                    data = line[6:].strip()
                    if data == b"[DONE]":
                        break
                    choices = json.loads(data)["choices"]
                    if choices and choices[0]["delta"].get("content"):
                        stamps.append(t)
        counts[i] = len(stamps)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(one(session, i) for i in range(streams)))
    return sum(counts)


async def minimal_httpx(url: str, api: str, streams: int, per_stream: int) -> int:
    """The same minimal client on httpx, the stack we did not choose (``--with-httpx``)."""
    import httpx

    path, body = minimal_request(api, per_stream)
    counts = [0] * streams

    async def one(client: httpx.AsyncClient, i: int) -> None:
        stamps: list[int] = []
        async with client.stream("POST", url + path, json=body) as resp:
            async for line in resp.aiter_lines():
                t = time.perf_counter_ns()
                if api == "ollama":
                    obj = json.loads(line)
                    if obj.get("done"):
                        break
                    if obj["message"]["content"]:
                        stamps.append(t)
                elif line.startswith("data: "):
                    if line[6:] == "[DONE]":
                        break
                    choices = json.loads(line[6:])["choices"]
                    if choices and choices[0]["delta"].get("content"):
                        stamps.append(t)
        counts[i] = len(stamps)

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(limits=limits, timeout=None) as client:
        await asyncio.gather(*(one(client, i) for i in range(streams)))
    return sum(counts)


# --- our path: backend + writer, every token stored ------------------------------------------


async def our_path(url: str, api: str, streams: int, per_stream: int, db: Path) -> Result:
    async with EventWriter(db) as writer:
        run_id, _ = await writer.create_run(RunInfo(name="bench", backend=api, model=MODEL))
        backend = make_backend(api, url if api == "ollama" else url + "/v1")
        finished: list[RequestFinished] = []

        def emit(ev: object) -> None:
            writer.put_nowait(ev)  # type: ignore[arg-type]
            if type(ev) is RequestFinished:
                finished.append(ev)

        async def run() -> int:
            async with backend:
                reqs = [
                    GenerationRequest(run_id, i, MODEL, "go", max_tokens=per_stream)
                    for i in range(streams)
                ]
                await asyncio.gather(*(backend.stream(r, emit) for r in reqs))
            await writer.flush()  # ingested = on disk
            return sum(f.chunks for f in finished)

        result = await measure(run)
        await writer.finish_run(run_id, "finished")
    with sqlite3.connect(db) as conn:
        (stored,) = conn.execute(
            "select count(*) from tokens where run_id = ?", [run_id]
        ).fetchone()
    assert stored == result.tokens == streams * per_stream, (stored, result.tokens)
    return result


# --- llmtop record, as a user runs it -----------------------------------------------------------


def record(
    url: str, api: str, streams: int, per_stream: int, db: Path, core: int | None
) -> tuple[int, float, float]:
    """``(tokens, seconds from first request to last end, CPU seconds)`` of one ``llmtop record``."""
    exe = Path(sys.executable).parent / "llmtop"
    cmd = [str(exe), "record", "--backend", api, "--url", url if api == "ollama" else url + "/v1",
           "--model", MODEL, "--requests", str(streams), "--concurrency", str(streams),
           "--max-tokens", str(per_stream), "--quiet", "--db", str(db)]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    pin = (lambda: os.sched_setaffinity(0, {core})) if core is not None else None
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, preexec_fn=pin)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    with sqlite3.connect(db) as conn:
        run_id = conn.execute("select max(id) from runs").fetchone()[0]
        tokens, t0, t1 = conn.execute(
            "select sum(chunks), min(t_start_ns), max(t_end_ns) from requests where run_id = ?",
            [run_id],
        ).fetchone()
    return tokens, (t1 - t0) / 1e9, cpu


def bench_record(
    url: str, api: str, streams: int, per_stream: int, tmp: Path, core: int | None, repeat: int
) -> Result:
    """Best of ``repeat``; the CPU of a 1-token run (start-up, imports) is subtracted."""
    _, _, base_cpu = record(url, api, 1, 1, tmp / "rec-base.db", core)
    best: Result | None = None
    for i in range(repeat):
        tokens, window, cpu = record(
            url, api, streams, per_stream, tmp / f"rec-{streams}-{i}.db", core
        )
        r = Result(tokens, window, max(cpu - base_cpu, 1e-9))
        best = r if best is None or r.tok_s > best.tok_s else best
    assert best is not None
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--api", choices=["ollama", "openai"], default="ollama")
    ap.add_argument(
        "--tokens", type=int, default=131_072, help="tokens per measurement (all streams)"
    )
    ap.add_argument("--streams", default="1,64,256")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--lines-per-write", type=int, default=64, help="chunks per server write")
    ap.add_argument("--no-record", action="store_true", help="skip `llmtop record`")
    ap.add_argument("--with-httpx", action="store_true", help="also a minimal httpx client")
    args = ap.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    client_core, server_core = (cores[0], cores[1]) if len(cores) >= 2 else (None, None)
    if client_core is not None:
        os.sched_setaffinity(0, {client_core})  # before any thread starts: the writer inherits it
    flood = Behavior(tokens=10**9, lines_per_write=args.lines_per_write, log_sends=False)
    parts, worst_ratio, worst_cpu = [], float("inf"), 0.0
    with FakeServer({MODEL: flood}, process=True, cpus={server_core} if server_core is not None else None) as srv, \
            tempfile.TemporaryDirectory() as tmp:  # fmt: skip
        for streams in [int(s) for s in args.streams.split(",")]:
            per_stream = max(1, args.tokens // streams)
            best_ours: Result | None = None
            best_min: Result | None = None
            for i in range(args.repeat):
                order = ["min", "ours"] if i % 2 == 0 else ["ours", "min"]
                for who in order:
                    if who == "min":
                        floor = minimal_client(srv.url, args.api, streams, per_stream)
                        r = asyncio.run(measure(lambda c=floor: c))
                        assert r.tokens == streams * per_stream, r
                        best_min = r if best_min is None or r.tok_s > best_min.tok_s else best_min
                    else:
                        db = Path(tmp) / f"ours-{streams}-{i}.db"
                        r = asyncio.run(our_path(srv.url, args.api, streams, per_stream, db))
                        best_ours = (
                            r if best_ours is None or r.tok_s > best_ours.tok_s else best_ours
                        )
            assert best_ours is not None and best_min is not None
            ratio, cpu_x = (
                best_ours.tok_s / best_min.tok_s,
                best_ours.us_per_tok / best_min.us_per_tok,
            )
            worst_ratio, worst_cpu = min(worst_ratio, ratio), max(worst_cpu, cpu_x)
            part = (
                f"{streams} streams: ours {best_ours.tok_s / 1e3:.0f}k tok/s {best_ours.us_per_tok:.1f} ms CPU/1k tok, "
                f"minimal {best_min.tok_s / 1e3:.0f}k {best_min.us_per_tok:.1f} ms ({ratio:.2f}x tok/s, {cpu_x:.2f}x CPU)"
            )
            if args.with_httpx:
                best_httpx: Result | None = None
                for _ in range(args.repeat):
                    hx = minimal_httpx(srv.url, args.api, streams, per_stream)
                    r = asyncio.run(measure(lambda c=hx: c))
                    best_httpx = (
                        r if best_httpx is None or r.tok_s > best_httpx.tok_s else best_httpx
                    )
                assert best_httpx is not None
                part += (
                    f", minimal httpx {best_httpx.tok_s / 1e3:.0f}k {best_httpx.us_per_tok:.1f} ms"
                )
            if not args.no_record and streams > 1:
                rec = bench_record(
                    srv.url, args.api, streams, per_stream, Path(tmp), client_core, args.repeat
                )
                part += f", llmtop record {rec.tok_s / 1e3:.0f}k {rec.us_per_tok:.1f} ms"
            parts.append(part)
    met = worst_ratio >= 0.6 and worst_cpu <= 2.0
    pinned = (
        f"client cpu{client_core}, server cpu{server_core}"
        if client_core is not None
        else "unpinned (1 core)"
    )
    print(
        f"collector ({args.api}, {pinned}, best of {args.repeat}): "
        + "; ".join(parts)
        + f"; goal >= 0.6x tok/s at <= 2x CPU: {'met' if met else 'NOT met'}"
        + f" (worst {worst_ratio:.2f}x, {worst_cpu:.2f}x)"
    )


if __name__ == "__main__":
    main()
