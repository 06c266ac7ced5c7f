"""Collector throughput: tokens/s and CPU per token of ``llmtop record`` (a whole process, every
token stored) beside a minimal aiohttp client (a whole process: stream, parse, timestamp, nothing
else), against a fake server flooding N concurrent streams; and the same two in-process (our
backend + EventWriter, the minimal loop) for the part that is only the hot path.

Whole-process numbers: CPU is the child's rusage from start to exit (imports, samplers, the final
summary included); tokens/s is over the same span, spawn to exit, for both clients (llmtop's
stored stamps cannot give an ingestion window: they say when the bytes arrived, core/arrival.py,
not when llmtop was done with them).
The server (tests/support/servers.py) runs on one core, both clients one after the other on
another. Each measurement is repeated, interleaved; the best of each is kept. Prints one line per
stream count, the load average beside it. Goal (issue 17): record >= 1.0x the minimal client's
tokens/s at <= 1.2x its CPU per token (64 streams).

    .venv/bin/python bench/collector.py [--streams 64] [--per-stream 2048] [--repeat 3]
                                        [--api openai|ollama] [--in-process] [--with-httpx]
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
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


# --- whole processes ----------------------------------------------------------------------------


def _child_run(run: Callable[[], None]) -> tuple[float, float]:
    """``(wall s, CPU s)`` of the child ``run`` starts and waits for, spawn to exit."""
    before, t = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    run()
    wall, after = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def minimal_process(url: str, api: str, streams: int, per_stream: int, core: int | None) -> Result:
    """The minimal client as its own process: tokens, its wall time and CPU, spawn to exit."""
    pin = (lambda: os.sched_setaffinity(0, {core})) if core is not None else None
    out: list[str] = []

    def run() -> None:
        cmd = [sys.executable, __file__, "--minimal-process", url, api, str(streams), str(per_stream)]  # fmt: skip
        out.append(subprocess.run(cmd, check=True, capture_output=True, text=True, preexec_fn=pin).stdout)  # fmt: skip

    wall, cpu = _child_run(run)
    tokens, _window = json.loads(out[0])
    return Result(tokens, wall, cpu)


def _minimal_main(url: str, api: str, streams: int, per_stream: int) -> None:
    t = time.perf_counter()
    tokens = asyncio.run(minimal_client(url, api, streams, per_stream))
    print(json.dumps([tokens, time.perf_counter() - t]))


def record_process(url: str, api: str, streams: int, per_stream: int, db: Path, core: int | None) -> Result:  # fmt: skip
    """``llmtop record`` as a user runs it: tokens stored, its wall time and CPU, spawn to exit."""
    exe = Path(sys.executable).parent / "llmtop"
    cmd = [str(exe), "record", "--backend", api, "--url", url if api == "ollama" else url + "/v1",
           "--model", MODEL, "--requests", str(streams), "--concurrency", str(streams),
           "--max-tokens", str(per_stream), "--warmup", "0", "--quiet", "--db", str(db)]  # fmt: skip
    pin = (lambda: os.sched_setaffinity(0, {core})) if core is not None else None
    wall, cpu = _child_run(lambda: subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, preexec_fn=pin))  # fmt: skip
    with sqlite3.connect(db) as conn:
        run_id = conn.execute("select max(id) from runs").fetchone()[0]
        (tokens,) = conn.execute(
            "select sum(chunks) from requests where run_id = ?", [run_id]
        ).fetchone()
        (stored,) = conn.execute(
            "select count(*) from tokens where run_id = ?", [run_id]
        ).fetchone()
    assert stored == tokens == streams * per_stream, (stored, tokens)
    return Result(tokens, wall, cpu)


def compile_llmtop() -> None:
    """llmtop's modules as bytecode, as pip leaves an installed package (the minimal client's
    aiohttp has its own): where nothing writes bytecode (PYTHONDONTWRITEBYTECODE, as on the CI
    machine) every ``llmtop`` start would otherwise compile ~150 modules, ~0.1 s of CPU."""
    root = Path(__file__).resolve().parents[1]
    for area in ("llmtop", "app", "collectors", "core", "live", "recorder", "scenarios", "storage"):
        compileall.compile_dir(root / area, quiet=1)


def _best(a: Result | None, b: Result) -> Result:
    return b if a is None or b.tok_s > a.tok_s else a


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--minimal-process":
        _minimal_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--api", choices=["ollama", "openai"], default="openai")
    ap.add_argument("--streams", default="64")
    ap.add_argument("--per-stream", type=int, default=2048, help="tokens per stream")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--lines-per-write", type=int, default=64, help="chunks per server write")
    ap.add_argument("--in-process", action="store_true", help="also backend+writer in-process")
    ap.add_argument("--with-httpx", action="store_true", help="also a minimal httpx client")
    args = ap.parse_args()
    compile_llmtop()
    cores = sorted(os.sched_getaffinity(0))
    client_core, server_core = (cores[-1], cores[0]) if len(cores) >= 2 else (None, None)
    flood = Behavior(tokens=10**9, lines_per_write=args.lines_per_write, log_sends=False)
    per = args.per_stream
    with FakeServer({MODEL: flood}, process=True, cpus={server_core} if server_core is not None else None) as srv, \
            tempfile.TemporaryDirectory() as tmp:  # fmt: skip
        for streams in [int(s) for s in args.streams.split(",")]:
            load = os.getloadavg()[0]
            rec: Result | None = None
            floor: Result | None = None
            for i in range(args.repeat):
                for who in ["min", "rec"] if i % 2 == 0 else ["rec", "min"]:
                    if who == "min":
                        floor = _best(floor, minimal_process(srv.url, args.api, streams, per, client_core))  # fmt: skip
                    else:
                        db = Path(tmp) / f"rec-{streams}-{i}.db"
                        rec = _best(rec, record_process(srv.url, args.api, streams, per, db, client_core))  # fmt: skip
            assert rec is not None and floor is not None
            line = (
                f"collector {streams} streams x {per} tokens ({args.api}; server cpu{server_core}, "
                f"clients cpu{client_core}; best of {args.repeat}; load {load:.2f}->"
                f"{os.getloadavg()[0]:.2f}): whole process, spawn to exit: llmtop record {rec.tok_s / 1e3:.0f}k "
                f"tok/s {rec.us_per_tok:.2f} us CPU/token, minimal aiohttp {floor.tok_s / 1e3:.0f}k "
                f"{floor.us_per_tok:.2f} us ({rec.tok_s / floor.tok_s:.2f}x tok/s, "
                f"{rec.us_per_tok / floor.us_per_tok:.2f}x CPU/token; goal >= 1.0x at <= 1.2x)"
            )
            if args.in_process:
                if client_core is not None:
                    os.sched_setaffinity(0, {client_core})
                ours: Result | None = None
                mini: Result | None = None
                for i in range(args.repeat):
                    db = Path(tmp) / f"ours-{streams}-{i}.db"
                    ours = _best(ours, asyncio.run(our_path(srv.url, args.api, streams, per, db)))
                    c = minimal_client(srv.url, args.api, streams, per)
                    mini = _best(mini, asyncio.run(measure(lambda c=c: c)))
                assert ours is not None and mini is not None
                line += (
                    f"; in-process: backend+writer {ours.tok_s / 1e3:.0f}k {ours.us_per_tok:.2f} us, "
                    f"minimal {mini.tok_s / 1e3:.0f}k {mini.us_per_tok:.2f} us "
                    f"({ours.tok_s / mini.tok_s:.2f}x, {ours.us_per_tok / mini.us_per_tok:.2f}x CPU)"
                )
            if args.with_httpx:
                hx: Result | None = None
                for _ in range(args.repeat):
                    h = minimal_httpx(srv.url, args.api, streams, per)
                    hx = _best(hx, asyncio.run(measure(lambda h=h: h)))
                assert hx is not None
                line += f"; minimal httpx in-process {hx.tok_s / 1e3:.0f}k {hx.us_per_tok:.2f} us"
            print(line, flush=True)


if __name__ == "__main__":
    main()
