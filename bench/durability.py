"""How soon a finished request is on disk: the promise a killed recorder keeps.

DESIGN.md: everything acknowledged as finished is on disk within one flush interval (250 ms).
``llmtop record`` (the command a user runs, as a whole process) records 400 requests at
concurrency 4 from the fake server (tests/support/servers.py, its own process; ~45 ms a request,
so flushes by size never come and every flush is the timer's). A reader polls the file every
2 ms from this process, as another process would read it, and notes when each request first
shows as finished; the server's log says when it wrote that request's last chunk (both clocks
CLOCK_MONOTONIC). The lag is the time to disk as a kill would find it, plus up to 2 ms of
polling. Goal: the largest < 250 ms. tests/faults/test_faults_durability.py checks the same
with room for a busy machine.

Prints one result line (``--json`` for a dict). Run: ``.venv/bin/python bench/durability.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support import wire_truth  # noqa: E402
from support.cli import llmtop_exe  # noqa: E402
from support.servers import Behavior, FakeServer  # noqa: E402

from llmtop.storage.db import open_database  # noqa: E402
from llmtop.storage.writer import FLUSH_INTERVAL_S  # noqa: E402

POLL_S = 0.002


def watch(db: Path, seen: dict[int, int], stop: threading.Event) -> None:
    """Note when each request first reads as finished (perf_counter_ns)."""
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        while not stop.is_set():
            now = time.perf_counter_ns()
            for (rid,) in conn.execute("select id from requests where status = 'ok'"):
                seen.setdefault(rid, now)
            stop.wait(POLL_S)
    finally:
        conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    paced = Behavior(tokens=8, ttft_ms=5, itl_ms=5)
    seen: dict[int, int] = {}
    with tempfile.TemporaryDirectory() as d, FakeServer({"m": paced}, process=True) as srv:
        db = Path(d) / "bench.db"
        open_database(db).close()
        stop = threading.Event()
        reader = threading.Thread(target=watch, args=(db, seen, stop))
        reader.start()
        try:
            proc = subprocess.run(
                [llmtop_exe(), "record", "--backend", "ollama", "--url", srv.url, "--model", "m",
                 "--requests", str(args.requests), "--concurrency", "4", "--unique-prompts",
                 "--warmup", "0", "--quiet", "--db", str(db)],
                capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"},
            )  # fmt: skip
        finally:
            stop.set()
            reader.join()
        if proc.returncode != 0:
            raise SystemExit(f"llmtop record failed: {proc.stderr.strip()}")
        ended = {wire_truth.request_number(log.body): log.t_end_ns for log in srv.log()}
    # what the last flush wrote can be first seen after the recorder closed: keep what the
    # reader saw while it ran
    lags = sorted((seen[rid] - t_end) / 1e6 for rid, t_end in ended.items() if rid in seen)
    result = {
        "requests": len(ended),
        "seen": len(lags),
        "lag_p50_ms": statistics.median(lags),
        "lag_p99_ms": lags[min(len(lags) - 1, int(0.99 * len(lags)))],
        "lag_max_ms": lags[-1],
        "flush_interval_ms": FLUSH_INTERVAL_S * 1000,
        "load_avg": os.getloadavg()[0],
    }
    if args.json:
        print(json.dumps(result))
        return
    r = result
    print(
        f"durability: a finished request on disk after its last chunk P50 {r['lag_p50_ms']:.0f} "
        f"ms, P99 {r['lag_p99_ms']:.0f} ms, max {r['lag_max_ms']:.0f} ms over {r['seen']} of "
        f"{r['requests']} requests (goal max < {r['flush_interval_ms']:.0f} ms, the flush "
        f"interval; polled every {POLL_S * 1000:.0f} ms); load average {r['load_avg']:.1f} on "
        f"{os.cpu_count()} cores"
    )


if __name__ == "__main__":
    main()
