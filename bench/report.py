"""How long `llmtop report` and `llmtop compare` take on big runs; prints one line.

Two runs of 2,000 requests x 128 tokens (512k token rows) are written through the real writer
into a temporary database. Timed, interleaved and repeated (the machine is shared, so each
number is the median of its repeats and comes with its peer measured in the same rounds):
- ``run_summary``: the storage query every report needs anyway (the peer);
- ``report``: load everything a report shows and render it for a 140-column terminal;
- ``compare``: load both runs with their per-request values and judge every metric;
- ``llmtop report A --html/--svg/--png FILE`` and ``llmtop report A`` (the terminal report,
  their peer) as whole processes, start-up and imports included: what a user waits for.

    .venv/bin/python bench/report.py [--requests N] [--tokens N] [--repeats N]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from llmtop.app.report.compare import load_comparison
from llmtop.app.report.data import load_report
from llmtop.app.report.document import report_renderables
from llmtop.core.events import RequestFinished, RequestStarted, TokenReceived
from llmtop.storage import queries
from llmtop.storage.db import open_readonly
from llmtop.storage.writer import EventWriter, RunInfo

MS = 1_000_000


async def write_run(path: Path, requests: int, tokens: int, itl_ms: float) -> int:
    async with EventWriter(path) as w:
        run_id, t0 = await w.create_run(RunInfo(name="bench", backend="fake", model="m"))
        for i in range(requests):
            start = t0 + i * 50 * MS
            first = start + (100 + i % 7) * MS
            times = [first + int(k * itl_ms * MS) for k in range(tokens)]
            w.put_nowait(RequestStarted(run_id, i + 1, start, step=f"s{i % 3}",
                                        prompt_label="ab"[i % 2]))  # fmt: skip
            for k, t in enumerate(times):
                w.put_nowait(TokenReceived(run_id, i + 1, k, t))
            await w.put(RequestFinished(run_id, i + 1, times[-1] + MS, start, first, times[-1],
                                        tokens, tokens))  # fmt: skip
        await w.finish_run(run_id, "finished")
    return run_id


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def cli_seconds(*args: str) -> float:
    """One ``llmtop`` command as a user runs it, output discarded."""
    exe = Path(sys.executable).with_name("llmtop")
    t = time.perf_counter()
    subprocess.run([str(exe), *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "140"})  # fmt: skip
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        a = asyncio.run(write_run(path, args.requests, args.tokens, 10.0))
        b = asyncio.run(write_run(path, args.requests, args.tokens, 11.0))
        db = open_readonly(path)
        out = Console(file=io.StringIO(), width=140, force_terminal=True)
        rounds: dict[str, list[float]] = {"summary": [], "report": [], "compare": []}
        files = ("html", "svg", "png")
        cli: dict[str, list[float]] = {k: [] for k in ("terminal", *files)}
        for _ in range(args.repeats):
            rounds["summary"].append(timed(lambda: queries.run_summary(db, a)))
            rounds["report"].append(
                timed(lambda: out.print(*report_renderables(load_report(db, a), 140)))
            )
            rounds["compare"].append(timed(lambda: load_comparison(db, [a, b])))
            cli["terminal"].append(cli_seconds("report", str(a), "--db", str(path)))
            for kind in files:
                target = Path(tmp) / f"report.{kind}"
                cli[kind].append(
                    cli_seconds("report", str(a), "--db", str(path), f"--{kind}", str(target))
                )
        med = {k: statistics.median(v) for k, v in rounds.items()}
        proc = {k: statistics.median(v) for k, v in cli.items()}
        rows = args.requests * args.tokens
        print(f"report {med['report']:.2f} s, compare {med['compare']:.2f} s, run_summary alone "
              f"{med['summary']:.2f} s; whole process: llmtop report --html {proc['html']:.2f} s, "
              f"--svg {proc['svg']:.2f} s, --png {proc['png']:.2f} s, terminal "
              f"{proc['terminal']:.2f} s ({args.requests:,} requests, {rows:,} tokens a run; "
              f"median of {args.repeats})")  # fmt: skip
        db.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
