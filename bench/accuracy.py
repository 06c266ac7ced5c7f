"""How exactly llmtop measures: ``llmtop record`` (the command a user runs, as a whole process)
and the dashboard, against the fake server's own log of when it got each request and wrote each
chunk (tests/support/servers.py, its own process; both sides stamp CLOCK_MONOTONIC).

The tests check the same things with bounds a busy machine keeps (tests/support/wire_truth.py);
the numbers below are for a quiet one, and their goals are the issue's:

1. TTFT and ITL: the server answers after 200 ms, then a token every 20 ms, 64 tokens, through
   the Ollama and the OpenAI API, one request at a time (8) and 64 at once. A TTFT's error is
   how long after the server began writing the first chunk ``record`` stamped it; an ITL error
   is a gap between two chunks as stamped against the same gap as written. Goal: mean absolute
   error < 2 ms one at a time, < 5 ms at 64.
2. Rates: ``--rate 20 --arrival constant`` (30 requests) and ``--rate 40 --seed 7`` Poisson (24):
   the rate the requests left at, against the one asked for, and the mean distance of a request
   from its planned offset. Goals: rate within 5 %, offsets within 5 ms on average.
3. The dashboard against ``record``: the same 12 requests (TTFT 200 ms, 12 tokens) measured by
   each; their TTFT P50s. Goal: within 2 ms.

Prints one result line (``--json`` for a dict). Run: ``.venv/bin/python bench/accuracy.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support import wire_truth  # noqa: E402
from support.cli import llmtop_exe  # noqa: E402
from support.servers import Behavior, FakeServer  # noqa: E402

from llmtop.app.app import DashboardConfig, LlmtopApp  # noqa: E402
from llmtop.recorder.flags import RunFlags  # noqa: E402
from llmtop.recorder.runner import arrival_offsets, step_rng  # noqa: E402
from llmtop.storage import queries  # noqa: E402
from llmtop.storage.db import open_database, open_readonly  # noqa: E402

MODELS = {
    "timed": Behavior(ttft_ms=200, itl_ms=20, tokens=64),
    "short": Behavior(ttft_ms=200, itl_ms=20, tokens=12),
    "rated": Behavior(ttft_ms=5, itl_ms=2, tokens=3),
}


def record(srv: FakeServer, db: Path, api: str, model: str, *flags: str) -> int:
    """Run ``llmtop record`` as a user would; the id of the run it stored."""
    url = srv.url if api == "ollama" else srv.openai_url
    cmd = [llmtop_exe(), "record", "--backend", api, "--url", url, "--model", model, "--db",
           str(db), "--quiet", "--unique-prompts", "--warmup", "0", *flags]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"llmtop record failed: {proc.stderr.strip()}")
    run_id = queries.last_run_id(open_readonly(db))
    assert run_id is not None
    return run_id


def errors_ms(db: Path, run_id: int, logs: list) -> tuple[list[float], list[float]]:
    """Per request the TTFT error, per gap the ITL error, against the server's writes (ms)."""
    measured = wire_truth.from_database(open_readonly(db), run_id)
    ttft, gaps = [], []
    for log in logs:
        m = measured[wire_truth.request_number(log.body)]
        sends = [t for t, _ in log.sends]
        ttft.append((m.arrivals_ns[0] - sends[0]) / 1e6)
        for i in range(1, len(sends)):
            ours = m.arrivals_ns[i] - m.arrivals_ns[i - 1]
            gaps.append(abs(ours - (sends[i] - sends[i - 1])) / 1e6)
    return ttft, gaps


def timings(srv: FakeServer, db: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for api in ("ollama", "openai"):
        for concurrency, requests in ((1, 8), (64, 64)):
            srv.log(clear=True)
            run_id = record(srv, db, api, "timed", "--requests", str(requests), "--concurrency",
                            str(concurrency))  # fmt: skip
            ttft, gaps = errors_ms(db, run_id, srv.log())
            out[f"{api}_c{concurrency}_ttft_mae_ms"] = statistics.fmean(ttft)
            out[f"{api}_c{concurrency}_itl_mae_ms"] = statistics.fmean(gaps)
    return out


def rates(srv: FakeServer, db: Path) -> dict[str, float]:
    def starts_s(run_id: int) -> list[float]:
        rows = open_readonly(db).execute(
            "select t_start_ns from requests where run_id = ? order by id", [run_id]
        )
        t = [r[0] for r in rows.fetchall()]
        return [(x - t[0]) / 1e9 for x in t]

    out: dict[str, float] = {}
    constant = starts_s(record(srv, db, "ollama", "rated", "--rate", "20", "--arrival",
                               "constant", "--requests", "30"))  # fmt: skip
    out["constant_rate_err_pct"] = 100 * abs((len(constant) - 1) / constant[-1] / 20 - 1)
    out["constant_offset_mae_ms"] = 1000 * statistics.fmean(
        abs(s - i / 20) for i, s in enumerate(constant)
    )
    planned_iter = arrival_offsets("poisson", 40.0, step_rng(7, 0))
    planned = [next(planned_iter) for _ in range(24)]
    poisson = starts_s(record(srv, db, "openai", "rated", "--rate", "40", "--seed", "7",
                              "--requests", "24"))  # fmt: skip
    out["poisson_rate_err_pct"] = 100 * abs(planned[-1] / poisson[-1] - 1)
    out["poisson_offset_mae_ms"] = 1000 * statistics.fmean(
        abs(s - p) for s, p in zip(poisson, planned, strict=True)
    )
    return out


async def dashboard_run(srv: FakeServer, db: Path, tmp: Path) -> int:
    flags = RunFlags(backend="ollama", url=srv.url, model="short", requests=12,
                     unique_prompts=True, warmup=0)  # fmt: skip
    app = LlmtopApp(DashboardConfig(db_path=db, config_dir=tmp / "cfg", launch=flags,
                                    watch=False))  # fmt: skip
    async with app.run_test(size=(120, 40)) as pilot:
        assert app.start_run(app.launch_settings)
        while app.session.recording is not None or app.run_status.state not in (
            "finished", "cancelled", "failed",
        ):  # fmt: skip
            await pilot.pause(0.1)
        run_id = app.run_status.run_id
    assert app.run_status.state == "finished" and run_id is not None, app.run_status
    return run_id


def dashboard(srv: FakeServer, db: Path, tmp: Path) -> dict[str, float]:
    srv.log(clear=True)
    recorded = record(srv, db, "ollama", "short", "--requests", "12")
    record_ttft, _ = errors_ms(db, recorded, srv.log(clear=True))
    dashed = asyncio.run(dashboard_run(srv, db, tmp))
    dash_ttft, _ = errors_ms(db, dashed, srv.log())
    rdb = open_readonly(db)
    p50 = {}
    for name, run_id in (("record", recorded), ("dashboard", dashed)):
        summary = queries.run_summary(rdb, run_id, with_itl=False)
        assert summary is not None
        p50[name] = summary.overall.ttft_ms.p50
    return {
        "dashboard_vs_record_ttft_p50_ms": abs(p50["dashboard"] - p50["record"]),
        "record_ttft_mae_ms": statistics.fmean(record_ttft),
        "dashboard_ttft_mae_ms": statistics.fmean(dash_ttft),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d, FakeServer(MODELS, process=True) as srv:
        tmp = Path(d)
        db = tmp / "bench.db"
        open_database(db).close()
        result: dict[str, Any] = {**timings(srv, db), **rates(srv, db), **dashboard(srv, db, tmp)}
    result["load_avg"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(result))
        return
    r = result
    print(
        f"accuracy: record TTFT error (mean, ms) ollama c1 {r['ollama_c1_ttft_mae_ms']:.2f} c64 "
        f"{r['ollama_c64_ttft_mae_ms']:.2f}, openai c1 {r['openai_c1_ttft_mae_ms']:.2f} c64 "
        f"{r['openai_c64_ttft_mae_ms']:.2f}; ITL error ollama c1 {r['ollama_c1_itl_mae_ms']:.2f} "
        f"c64 {r['ollama_c64_itl_mae_ms']:.2f}, openai c1 {r['openai_c1_itl_mae_ms']:.2f} c64 "
        f"{r['openai_c64_itl_mae_ms']:.2f} (goals < 2 at c1, < 5 at c64); rate 20/s constant "
        f"{r['constant_rate_err_pct']:.2f} % off, offsets {r['constant_offset_mae_ms']:.2f} ms; "
        f"Poisson 40/s seed 7 {r['poisson_rate_err_pct']:.2f} % off, offsets "
        f"{r['poisson_offset_mae_ms']:.2f} ms (goals < 5 %, < 5 ms); dashboard TTFT P50 vs "
        f"record {r['dashboard_vs_record_ttft_p50_ms']:.2f} ms (goal < 2 ms; TTFT error "
        f"{r['dashboard_ttft_mae_ms']:.2f} vs {r['record_ttft_mae_ms']:.2f} ms); load average "
        f"{r['load_avg']:.1f} on {os.cpu_count()} cores"
    )


if __name__ == "__main__":
    main()
