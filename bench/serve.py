"""Benchmark ``llmtop serve``: aggregate output tokens/s and TTFT at concurrency 1, 2, 4, 8.

Starts ``llmtop serve --port 0`` (or uses ``--url``). For each concurrency level, that many
workers stream requests back to back from /api/generate (greedy) with a lean aiohttp client for
``--warmup`` + ``--seconds``; only the window after the warm-up counts: tokens are the streamed
chunks (one per token) that arrived inside it, TTFT the mean over the requests sent inside it.
A fixed window measures steady load; counting whole requests instead would add the drain at
the end of each level, when fewer and fewer workers are left.

Output lengths vary around ``--max-tokens`` (0.5x to 1.5x, mean 1x), as real traffic does: with
equal lengths every worker would finish on the same step and all would arrive again at once, in
lockstep, which measures a thundering herd rather than steady load. Levels are interleaved and
repeated (``--repeat``) and the median of the repeats is kept: this machine is shared and noisy.

Requests are greedy unless ``--temperature`` says otherwise (then the server's defaults for
top_k / top_p apply, as a plain Ollama client gets them): sampled rows cost the scheduler more
than an argmax, so this shows what batching does for ordinary chat traffic.

Prints one line: tokens/s per level, mean TTFT per level, and the two ratios against the goals
(c8 >= 4x the tokens/s of c1; TTFT at c8 <= 3x that at c1).

    .venv/bin/python bench/serve.py [--url URL] [--levels 1,2,4,8] [--max-tokens 64]
                                    [--temperature 0.8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

READY = "llmtop serve: listening on "
LENGTHS = (1.0, 0.5, 1.25, 0.75, 1.5)  # output length factors, mean 1
PROMPTS = [
    "Write a long story about a lighthouse keeper.",
    "Explain how a car engine works, step by step.",
    "Describe the water cycle in detail.",
    "Write a long letter to a friend about your holiday.",
    "Explain the history of the printing press.",
    "Describe how to bake bread, from flour to loaf.",
    "Write a long poem about the autumn forest.",
    "Explain how computers store numbers.",
]


@dataclass
class Window:
    """What one level saw inside its measuring window."""

    start: float
    end: float
    tokens: int = 0
    ttfts: list[float] = field(default_factory=list)


def start_server(max_batch: int) -> tuple[subprocess.Popen[str], str]:
    exe = Path(sys.executable).parent / "llmtop"
    proc = subprocess.Popen(
        [str(exe), "serve", "--port", "0", "--max-batch", str(max_batch)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(READY):
            return proc, line.removeprefix(READY).split()[0]
    raise SystemExit(f"llmtop serve exited ({proc.wait()}) before it was ready")


TEMPERATURE = 0.0  # --temperature


async def one(
    session: aiohttp.ClientSession, url: str, prompt: str, max_tokens: int, win: Window
) -> None:
    """Stream one request; count its chunks and its TTFT into ``win`` where they fall inside."""
    body = {"model": "smollm2", "prompt": prompt,
            "options": {"num_predict": max_tokens, "temperature": TEMPERATURE}}  # fmt: skip
    t0 = time.perf_counter()
    first = True
    async with session.post(f"{url}/api/generate", json=body) as r:
        r.raise_for_status()
        async for line in r.content:
            now = time.perf_counter()
            chunk = json.loads(line)
            if "error" in chunk:
                raise RuntimeError(f"request failed: {chunk['error']}")
            if chunk.get("response"):
                if first and win.start <= t0 < win.end:
                    win.ttfts.append(now - t0)
                first = False
                if win.start <= now < win.end:
                    win.tokens += 1
            if now >= win.end:
                return  # the window is over: leave the rest of this stream


async def level(url: str, concurrency: int, warmup: float, seconds: float, max_tokens: int):
    """(tokens/s, mean TTFT s) of ``concurrency`` closed-loop workers over the window."""
    now = time.perf_counter()
    win = Window(now + warmup, now + warmup + seconds)
    timeout = aiohttp.ClientTimeout(total=600)
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=conn) as session:

        async def worker(w: int) -> None:
            k = w
            while time.perf_counter() < win.end:
                n = round(max_tokens * LENGTHS[k % len(LENGTHS)])
                await one(session, url, PROMPTS[k % len(PROMPTS)], n, win)
                k += concurrency

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return win.tokens / seconds, statistics.fmean(win.ttfts) if win.ttfts else float("nan")


async def main(args: argparse.Namespace) -> str:
    proc = None
    url = args.url
    if url is None:
        proc, url = start_server(max(args.levels))
    tps: dict[int, list[float]] = {c: [] for c in args.levels}
    ttft: dict[int, list[float]] = {c: [] for c in args.levels}
    try:
        for _ in range(args.repeat):
            for c in args.levels:
                t, f = await level(url, c, args.warmup, args.seconds, args.max_tokens)
                tps[c].append(t)
                ttft[c].append(f)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    tp = {c: statistics.median(v) for c, v in tps.items()}
    tt = {c: statistics.median(v) * 1e3 for c, v in ttft.items()}
    lo, hi = min(args.levels), max(args.levels)
    return (
        "bench serve: tok/s "
        + " ".join(f"c{c}={tp[c]:.0f}" for c in args.levels)
        + f" (c{hi}/c{lo} {tp[hi] / tp[lo]:.2f}x, goal >= 4x) | TTFT ms "
        + " ".join(f"c{c}={tt[c]:.0f}" for c in args.levels)
        + f" (c{hi}/c{lo} {tt[hi] / tt[lo]:.2f}x, goal <= 3x) | ~{args.max_tokens} tokens, "
        + (f"temperature {args.temperature:g}, " if args.temperature else "greedy, ")
        + f"{args.seconds:g} s windows, median of {args.repeat}, {os.cpu_count()} cpus"
    )


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="an already running server (default: start llmtop serve)")
    p.add_argument("--levels", default="1,2,4,8", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--max-tokens", type=int, default=64, help="mean output tokens per request")
    p.add_argument("--warmup", type=float, default=1.5, help="seconds per level not counted")
    p.add_argument("--seconds", type=float, default=6.0, help="measured seconds per level")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    return p.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    TEMPERATURE = arguments.temperature
    print(asyncio.run(main(arguments)))
