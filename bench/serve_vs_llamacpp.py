"""``llmtop serve`` against llama.cpp's ``llama-server`` on the same GGUF, through the same client.

Each server runs alone (one after the other, never both at once: they would share the cores),
started by this script and stopped after its measurements. Both get the OpenAI
``/v1/completions`` endpoint from the same aiohttp client:
- c1: ``--c1`` requests one after the other, 64 new tokens each (``ignore_eos``, greedy);
  tok/s = completion tokens / wall time, summed over the requests;
- c8: ``--c8`` rounds of 8 concurrent requests; tok/s = the round's completion tokens / its
  wall time;
- TTFT: a ~500-token prompt (a different first line each time, so neither server's prefix
  cache holds it), streamed; seconds until the first chunk with text;
- decode: the server's own decode speed, the mean over the c1 requests: llama-server's
  ``timings.predicted_per_second`` (llama.cpp's decode loop, without HTTP), ``llmtop serve``'s
  ``eval_count / eval_duration`` from the same prompts sent to its Ollama ``/api/generate``
  (greedy, at most 64 tokens; its OpenAI answers carry no timings), and their ratio;
- sampled / greedy (``llmtop serve`` only): ``--sampled`` pairs of streamed c1 requests, one
  greedy and one sampled (temperature 0.8, top-p 0.95), alternating which goes first; TPOT = the
  time from the first chunk with text to the last, over the chunks after the first; the ratio
  of the medians. Not llama-server: the build here slowed from 10 to ~280 ms a token over eight
  such streams (greedy ones too) and then dropped its connections.
Servers: ``llama-server --parallel 8 -t THREADS --cont-batching -c 8192`` and ``llmtop serve
--max-batch 8`` with its defaults (what a user runs; ``--threads`` only when given here), each
with its own OpenMP wait policy (the one llmtop.engine sets for this process is not passed on). The
whole pair is repeated ``--rounds`` times, alternating which goes first; each number printed is
the median over rounds, with the range. This machine is shared: compare within one run.

llama-server is never a dependency: build it with ``bench/real_servers.sh llama`` (its own venv,
bench/.venv-llamaserver) or pass ``--llama-server PATH``. ``--torch-forward`` adds a third
server in each round: ``llmtop serve`` with ``LLMTOP_ENGINE_FORWARD=torch``, its per-layer torch
forward (the engine before native_forward.py), to compare.

    .venv/bin/python bench/serve_vs_llamacpp.py [--rounds 2] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
from serve import PROMPTS, READY  # bench/serve.py: the same prompts, the same ready line

from llmtop.collectors.engine import free_port
from llmtop.engine.loader import default_model_path

ROOT = Path(__file__).resolve().parents[1]
LLAMA_SERVER = ROOT / "bench" / ".venv-llamaserver" / "bin" / "llama-server"
NEW_TOKENS = 64
LONG = (
    "Large language models are served by programs that schedule requests, keep a cache of keys "
    "and values for every sequence, and stream tokens back as they are produced. The time to the "
    "first token depends mostly on the length of the prompt, while the time between tokens "
    "depends on how many bytes of weights each step must read from memory. "
)  # ~60 tokens; x8 plus a first line: ~500


@contextmanager
def llama_server(exe: Path, gguf: Path, threads: int) -> Iterator[str]:
    port = free_port()
    cmd = [str(exe), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--parallel", "8", "-t", str(threads), "--cont-batching", "-c", "8192"]
    # Not llmtop.engine's OMP_WAIT_POLICY=PASSIVE (set in this process by the import above):
    # llama-server's OpenMP threads would sleep between its ops, 34 against ~102 tok/s here.
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"llama-server exited ({proc.returncode}) before it was ready")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    pass
                if asyncio.run(_health(url)):
                    break
            except OSError:
                pass
            time.sleep(0.3)
        else:
            raise SystemExit("llama-server not ready after 120 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


async def _health(url: str) -> bool:
    async with aiohttp.ClientSession() as s:
        try:
            async with s.get(url + "/health") as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False


@contextmanager
def llmtop_serve(gguf: Path, threads: int | None, torch_forward: bool = False) -> Iterator[str]:
    exe = Path(sys.executable).parent / "llmtop"
    del gguf  # the bundled model is that file; served under its name, as a user serves it
    cmd = [str(exe), "serve", "--port", "0", "--max-batch", "8", "--model", "smollm2"]
    if threads:
        cmd += ["--threads", str(threads)]
    env = os.environ | ({"LLMTOP_ENGINE_FORWARD": "torch"} if torch_forward else {})
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if line.startswith(READY):
                yield line.removeprefix(READY).split()[0]
                break
        else:
            raise SystemExit(f"llmtop serve exited ({proc.wait()}) before it was ready")
    finally:
        proc.terminate()
        proc.wait(30)


SAMPLED = {"temperature": 0.8, "top_p": 0.95}
"""What a sampled request asks for (OpenAI's fields; no top-k, as an OpenAI client sends)."""


def body(prompt: str, max_tokens: int, stream: bool = False, sampled: bool = False) -> dict:
    return {
        "model": "smollm2",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,  # both servers: every request makes NEW_TOKENS tokens
        "stream": stream,
        **(SAMPLED if sampled else {}),
    }


async def complete(s: aiohttp.ClientSession, url: str, prompt: str) -> tuple[int, float | None]:
    """One request: (completion tokens, the server's own decode tok/s or None)."""
    async with s.post(url + "/v1/completions", json=body(prompt, NEW_TOKENS)) as r:
        r.raise_for_status()
        out = await r.json()
    speed = (out.get("timings") or {}).get("predicted_per_second")
    return int(out["usage"]["completion_tokens"]), speed


async def ollama_decode(s: aiohttp.ClientSession, url: str, prompt: str) -> float | None:
    """``llmtop serve``'s own decode tok/s for one greedy request on its Ollama API."""
    req = {"model": "smollm2", "prompt": prompt, "stream": False,
           "options": {"num_predict": NEW_TOKENS, "temperature": 0.0}}  # fmt: skip
    async with s.post(url + "/api/generate", json=req) as r:
        r.raise_for_status()
        out = await r.json()
    n, ns = out.get("eval_count"), out.get("eval_duration")
    return n / (ns / 1e9) if n and ns and n > 1 else None


async def text_times(s: aiohttp.ClientSession, url: str, req: dict) -> AsyncIterator[float]:
    """``perf_counter()`` at each streamed chunk that carries text."""
    async with s.post(url + "/v1/completions", json=req) as r:
        r.raise_for_status()
        async for raw in r.content:
            line = raw.decode().strip()
            data = line[6:] if line.startswith("data: ") and line != "data: [DONE]" else None
            if data and json.loads(data)["choices"][0].get("text"):
                yield time.perf_counter()


async def ttft(s: aiohttp.ClientSession, url: str, first_line: str) -> float:
    t = time.perf_counter()
    async with contextlib.aclosing(text_times(s, url, body(first_line + LONG * 8, 8, True))) as ts:
        async for first in ts:
            return first - t
    raise RuntimeError("no text streamed")


async def tpot(s: aiohttp.ClientSession, url: str, prompt: str, sampled: bool) -> float | None:
    """One streamed request: seconds per chunk with text after the first (None: fewer than 2)."""
    times = [t async for t in text_times(s, url, body(prompt, NEW_TOKENS, True, sampled))]
    return (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else None


async def measure(url: str, c1: int, c8: int, sampled: int, tag: str) -> dict:
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        await complete(s, url, "Hello")  # warm-up
        tokens, speeds, t = 0, [], time.perf_counter()
        for i in range(c1):
            n, speed = await complete(s, url, PROMPTS[i % len(PROMPTS)])
            tokens += n
            if speed:
                speeds.append(speed)
        c1_tps = tokens / (time.perf_counter() - t)
        if not tag.endswith("llama-server"):
            for i in range(c1):
                speed = await ollama_decode(s, url, PROMPTS[i % len(PROMPTS)])
                if speed:
                    speeds.append(speed)
        rounds = []
        for _ in range(c8):
            t = time.perf_counter()
            done = await asyncio.gather(*(complete(s, url, p) for p in PROMPTS))
            rounds.append(sum(n for n, _ in done) / (time.perf_counter() - t))
        tpots: dict[bool, list[float]] = {False: [], True: []}
        for i in range(sampled):
            for kind in (False, True) if i % 2 == 0 else (True, False):
                t = await tpot(s, url, PROMPTS[i % len(PROMPTS)], kind)
                if t is not None:
                    tpots[kind].append(t)
        firsts = [
            await ttft(s, url, f"Note {tag}-{i}: summarise the text below.\n") for i in range(3)
        ]
    greedy_ms = statistics.median(tpots[False]) * 1e3 if tpots[False] else None
    sampled_ms = statistics.median(tpots[True]) * 1e3 if tpots[True] else None
    return {
        "c1_tps": c1_tps,
        "c8_tps": statistics.median(rounds),
        "ttft_s": statistics.median(firsts),
        "decode_tps": statistics.mean(speeds) if speeds else None,
        "tpot_greedy_ms": greedy_ms,
        "tpot_sampled_ms": sampled_ms,
        "sampled_over_greedy": sampled_ms / greedy_ms if greedy_ms and sampled_ms else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--llama-server", type=Path, default=Path(os.environ.get("LLAMA_SERVER", LLAMA_SERVER))
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="both servers' (default: llmtop's own, llama-server 2)",
    )
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--c1", type=int, default=3, help="sequential requests per round")
    ap.add_argument("--c8", type=int, default=2, help="rounds of 8 concurrent requests")
    ap.add_argument(
        "--sampled", type=int, default=4, help="pairs of streamed greedy and sampled requests"
    )
    ap.add_argument("--torch-forward", action="store_true", help="also llmtop's torch forward")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not args.llama_server.exists():
        sys.exit(
            f"llmtop: no llama-server at {args.llama_server} (bench/real_servers.sh llama builds one)"
        )
    gguf = default_model_path()
    names = ["llama-server", "llmtop"] + (["llmtop-torch"] if args.torch_forward else [])
    results: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            if name == "llama-server":
                server = llama_server(args.llama_server, gguf, args.threads or 2)
            else:
                server = llmtop_serve(gguf, args.threads, name == "llmtop-torch")
            with server as url:
                pairs = 0 if name == "llama-server" else args.sampled
                res = asyncio.run(measure(url, args.c1, args.c8, pairs, f"{r}{name}"))
            results[name].append(res)
            print(f"round {r + 1} {name}: {json.dumps(res)}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return

    def cell(name: str, key: str, fmt: str) -> str:
        vals = [x[key] for x in results[name] if x[key] is not None]
        if not vals:
            return "-"
        return f"{statistics.median(vals):{fmt}} ({min(vals):{fmt}}-{max(vals):{fmt}})"

    print(
        f"{'':14s} {'c1 tok/s':>20s} {'c8 tok/s':>20s} {'TTFT ~500 tok, s':>22s} {'own decode tok/s':>20s}"
    )
    for name in results:
        print(
            f"{name:14s} {cell(name, 'c1_tps', '.1f'):>20s} {cell(name, 'c8_tps', '.1f'):>20s} "
            f"{cell(name, 'ttft_s', '.3f'):>22s} {cell(name, 'decode_tps', '.1f'):>20s}"
        )
    print(
        f"sampled (temperature {SAMPLED['temperature']}, top-p {SAMPLED['top_p']}) / greedy, "
        "TPOT of one streamed request (whole process, through HTTP):"
    )
    for name in (n for n in results if n != "llama-server"):
        print(
            f"  {name:14s} {cell(name, 'sampled_over_greedy', '.3f')}x "
            f"(greedy {cell(name, 'tpot_greedy_ms', '.2f')} ms, "
            f"sampled {cell(name, 'tpot_sampled_ms', '.2f')} ms)"
        )
    med = {
        n: {k: statistics.median(x[k] for x in results[n]) for k in ("c1_tps", "c8_tps", "ttft_s")}
        for n in results
    }
    decode = {n: [x["decode_tps"] for x in results[n] if x["decode_tps"]] for n in results}
    if decode["llmtop"] and decode["llama-server"]:
        ratio = statistics.median(decode["llmtop"]) / statistics.median(decode["llama-server"])
        print(f"own decode, llmtop serve / llama.cpp (each server's own timing): {ratio:.2f}x")
    print(
        f"llmtop / llama-server: c1 {med['llmtop']['c1_tps'] / med['llama-server']['c1_tps']:.2f}x, "
        f"c8 {med['llmtop']['c8_tps'] / med['llama-server']['c8_tps']:.2f}x, "
        f"TTFT {med['llmtop']['ttft_s'] / med['llama-server']['ttft_s']:.2f}x (lower is better)"
    )


if __name__ == "__main__":
    main()
