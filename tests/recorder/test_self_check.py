"""The client checks itself (issue 17 item 4): the loop-lag probe, the verdict, what is stored with
the run, what ``record``, ``report`` and the live view say.

The two end-to-end runs must hold on a busy shared machine: the quiet one runs at raised priority
(real-time when allowed) against a server whose TTFT is long, so only a loop lag of tens of
milliseconds would warn; the loaded one shares its core with a CPU hog against a 5 ms TTFT, where
the hog's time slices alone are several times the 0.25 ms that warns.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest
from support.cli import llmtop_exe, run_llmtop
from support.servers import Behavior, FakeServer, raise_priority

from llmtop.core.events import ClientSampled, RequestFinished, RequestStarted, TokenReceived
from llmtop.core.self_check import ClientCheck, bottleneck
from llmtop.live.aggregate import Aggregator
from llmtop.recorder.loop_probe import LoopProbe, new_event_loop

WARNING = "llmtop itself was the bottleneck"


def test_the_verdict_names_the_cause_and_by_how_much():
    quiet = ClientCheck(loop_lag_ms_p50=0.1, loop_lag_ms_p99=1.0, loop_cpu_pct=20.0)
    assert bottleneck(quiet, ttft_ms_p50=400.0) is None
    assert bottleneck(None, ttft_ms_p50=400.0) is None
    assert bottleneck(ClientCheck(loop_lag_ms_p99=0.3), ttft_ms_p50=3.0) is None  # the floor
    lagging = bottleneck(ClientCheck(loop_lag_ms_p99=30.0), ttft_ms_p50=100.0)
    assert lagging is not None and WARNING in lagging
    assert "30 ms late (p99), 30% of the TTFT p50 of 100 ms (limit 5%)" in lagging
    assert "--workers 2" in lagging
    near = bottleneck(ClientCheck(loop_lag_ms_p99=0.613), ttft_ms_p50=11.33)
    assert near is not None and "5.4% of the TTFT p50 of 11.33 ms (limit 5%)" in near
    busy = bottleneck(ClientCheck(loop_cpu_pct=93.0, workers=2), ttft_ms_p50=None, cores=8)
    assert busy is not None and "93% of a core busy (limit 85%)" in busy and "--workers 4" in busy
    full = bottleneck(ClientCheck(loop_cpu_pct=93.0, workers=2), ttft_ms_p50=None, cores=2)
    assert full is not None and "all 2 cores have a worker" in full
    # late but mostly idle: other programs held the cores (the bundled engine on a small machine)
    waited = bottleneck(ClientCheck(loop_lag_ms_p99=30.0, loop_cpu_pct=12.0), ttft_ms_p50=100.0, cores=2)  # fmt: skip
    assert waited is not None and WARNING in waited and "busy only 12% of the time" in waited
    assert "a core the server does not use (taskset)" in waited and "--workers 2" in waited


def test_the_probe_sees_a_blocked_loop_and_reports_each_second():
    seen: list[ClientSampled] = []

    async def main() -> LoopProbe:
        probe = LoopProbe(seen.append, run_id=7, worker=3, report_s=0.05)
        probe.start()
        await asyncio.sleep(0.03)
        time.sleep(0.08)  # the load: the loop cannot run for 80 ms
        await asyncio.sleep(0.1)
        probe.stop()
        return probe

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        probe = runner.run(main())
    s = probe.summary()
    assert s.probes >= 3 and s.loop_lag_ms_max is not None and s.loop_lag_ms_max >= 60
    assert s.cpu_pct is not None and s.cpu_pct >= 0 and s.loop_cpu_pct is not None
    assert seen and all(e.run_id == 7 and e.worker == 3 for e in seen)
    assert max(e.loop_lag_ms_max or 0 for e in seen) >= 60


def test_the_live_view_warns_when_the_loop_lags_behind_the_ttft():
    agg = Aggregator()
    ms = 1_000_000
    evs = []
    for rid in range(1, 4):
        t0 = rid * 100 * ms
        evs += [
            RequestStarted(1, rid, t0),
            TokenReceived(1, rid, 0, t0 + 10 * ms),
            RequestFinished(1, rid, t0 + 20 * ms, t0, t0 + 10 * ms, t0 + 10 * ms, 1, 1),
        ]
    for ev in evs:
        agg.add(ev)
    assert agg.snapshot().bottleneck is None and agg.snapshot().client is None
    agg.add(ClientSampled(1, 500 * ms, 0, 0.1, 0.2, 0.3, 5.0, 4.0))
    snap = agg.snapshot()
    assert (
        snap.client is not None and snap.client.loop_lag_ms_p99 == 0.2 and snap.bottleneck is None
    )
    agg.add(ClientSampled(1, 600 * ms, 1, 0.5, 4.0, 6.0, 50.0, 45.0))
    snap = agg.snapshot()
    assert snap.client is not None and snap.client.workers == 2 and snap.client.cpu_pct == 55.0
    assert snap.bottleneck is not None and WARNING in snap.bottleneck  # 4 ms vs TTFT 10 ms


def _record(
    tmp_path, srv: FakeServer, *args: str, **popen
) -> tuple[subprocess.CompletedProcess[str], dict]:
    db = tmp_path / "self.db"
    cmd = [llmtop_exe(), "record", "--backend", "openai", "--url", srv.openai_url, "--model", "m",
           "--warmup", "0", "--sample-hz", "1", "--db", str(db), "--json", *args]  # fmt: skip
    env = {**os.environ, "NO_COLOR": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, **popen)
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads(proc.stdout)


def test_open_loop_requests_keep_their_schedule_and_the_run_its_check(tmp_path):
    with FakeServer({"m": Behavior(tokens=2)}) as srv:
        _, out = _record(tmp_path, srv, "--requests", "12", "--rate", "50", "--arrival", "constant")
    client = out["client"]
    for key in ("loop_lag_ms_p50", "loop_lag_ms_p99", "schedule_lag_ms_p99", "cpu_pct"):
        assert isinstance(client[key], float), (key, client)
    assert client["probes"] > 0 and client["workers"] == 1
    with sqlite3.connect(tmp_path / "self.db") as c:
        rows = c.execute(
            "select t_scheduled_ns, t_start_ns from requests order by t_scheduled_ns"
        ).fetchall()
    due = [r[0] for r in rows]
    assert len(due) == 12 and all(d is not None for d in due)
    assert [b - a for a, b in itertools.pairwise(due)] == pytest.approx([20e6] * 11, abs=2)
    assert all(sent >= scheduled - 1000 for scheduled, sent in rows)  # never ahead of schedule
    report = run_llmtop("report", "--db", str(tmp_path / "self.db"), "--json")
    assert (
        json.loads(report.stdout)["client"]["schedule_lag_ms_p99"] == client["schedule_lag_ms_p99"]
    )
    text = run_llmtop("report", "--db", str(tmp_path / "self.db"))
    assert "llmtop itself" in text.stdout and "schedule lag p99" in text.stdout


def test_a_quiet_run_gets_no_warning(tmp_path):
    slow = Behavior(tokens=3, ttft_ms=600, itl_ms=5)  # warns only past 30 ms of loop lag
    with FakeServer({"m": slow}, process=True) as srv:
        proc, out = _record(tmp_path, srv, "--requests", "8", "--concurrency", "4",
                            preexec_fn=raise_priority)  # fmt: skip
    assert WARNING not in proc.stderr, proc.stderr
    assert out["client"]["bottleneck"] is None
    assert out["client"]["loop_lag_ms_p99"] is not None
    with sqlite3.connect(tmp_path / "self.db") as c:  # two rounds of 600 ms: one sample a second
        assert c.execute("select count(*) from client_samples").fetchone()[0] >= 1
    report = run_llmtop("report", "--db", str(tmp_path / "self.db"))
    assert WARNING not in report.stdout


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs a core for the server")
def test_a_run_sharing_its_core_with_a_cpu_hog_is_told(tmp_path):
    cores = sorted(os.sched_getaffinity(0))
    server_core, client_core = cores[0], cores[-1]
    fast = Behavior(tokens=4, ttft_ms=5, itl_ms=2)
    pin = lambda: os.sched_setaffinity(0, {client_core})  # noqa: E731
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=pin)
    try:
        with FakeServer({"m": fast}, process=True, cpus={server_core}) as srv:
            proc, out = _record(tmp_path, srv, "--requests", "120", "--concurrency", "4",
                                preexec_fn=pin)  # fmt: skip
    finally:
        hog.kill()
        hog.wait()
    lines = [line for line in proc.stderr.splitlines() if WARNING in line]
    assert len(lines) == 1, proc.stderr
    assert (
        lines[0].startswith("llmtop: ")
        and "--workers" in lines[0]
        and "% of the TTFT p50" in lines[0]
    )
    assert out["client"]["bottleneck"] == lines[0].removeprefix("llmtop: ")
    report = run_llmtop("report", "--db", str(tmp_path / "self.db"))
    assert WARNING in " ".join(report.stdout.split())
