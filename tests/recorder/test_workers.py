"""``--workers N`` (issue 17 item 3): streams spread over processes, one run, one database, one
clock; open-loop schedules across workers; Ctrl-C and kill as with one process.

The real ``llmtop record`` against the fake server in its own process; waits poll the database
or the process table with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import subprocess
import time

import psutil
import pytest
from support.cli import assert_one_line_error, llmtop_exe, run_llmtop
from support.servers import Behavior, FakeServer

from llmtop.recorder.flags import FlagError, RunFlags, plan_from_flags
from llmtop.recorder.runner import Share
from llmtop.recorder.workers import STREAMS_PER_WORKER, auto_workers
from llmtop.scenarios.model import Prompt, Scenario, Step


def test_closed_loop_shares_partition_the_requests_in_proportion_to_streams():
    for streams, workers, requests in [(5, 2, 23), (4, 4, 10), (3, 5, 7), (1, 3, 4), (64, 3, 500)]:
        got = [list(Share(w, workers).indices(streams, requests)) for w in range(workers)]
        assert sorted(itertools.chain(*got)) == list(range(requests))
        for w, mine in enumerate(got):
            n_streams = len(Share(w, workers).streams(streams))
            assert mine == sorted(mine)
            assert abs(len(mine) - requests * n_streams / streams) <= n_streams  # by streams


def test_open_loop_shares_deal_the_schedule_in_turn():
    for workers, cap in [(2, None), (3, None), (4, 2), (2, 1)]:
        owners = [[w for w in range(workers) if Share(w, workers).owns(i, cap)] for i in range(40)]
        assert all(len(o) == 1 for o in owners)  # each request has exactly one sender
        active = workers if cap is None else min(workers, cap)
        assert {o[0] for o in owners} == set(range(active))


def test_auto_picks_from_the_streams_and_the_cores():
    p = (Prompt("p", "x"),)

    def sc(*concurrency: int) -> Scenario:
        return Scenario("s", tuple(Step(f"c{c}", p, concurrency=c) for c in concurrency))

    assert auto_workers(sc(1, 8), cores=16) == 1
    assert auto_workers(sc(4 * STREAMS_PER_WORKER), cores=16) == 4
    assert auto_workers(sc(4 * STREAMS_PER_WORKER + 1), cores=2) == 2
    assert plan_from_flags(RunFlags(workers="3")).workers == 3
    assert plan_from_flags(RunFlags()).workers == 1
    with pytest.raises(FlagError) as e:
        plan_from_flags(RunFlags(workers="many"))
    assert e.value.flag == "workers"


def test_a_bad_workers_value_is_one_line(tmp_path):
    proc = run_llmtop("record", "--workers", "0", "--db", str(tmp_path / "x.db"))
    assert_one_line_error(proc, 2, "--workers '0'", "1 to 64, or auto")


def _cmd(srv: FakeServer, db, *args: str) -> list[str]:
    return [llmtop_exe(), "record", "--backend", "openai", "--url", srv.openai_url, "--model", "m",
            "--db", str(db), "--sample-hz", "2", "--unique-prompts", *args]  # fmt: skip


def _rows(db) -> list[tuple]:
    with sqlite3.connect(db) as c:
        return c.execute(
            "select id, status, chunks, t_scheduled_ns, t_start_ns, warmup from requests order by id"
        ).fetchall()


def test_two_workers_make_one_run_with_every_request_once(tmp_path):
    db = tmp_path / "w.db"
    slow = Behavior(tokens=6, ttft_ms=150, itl_ms=10)  # long enough for a sample a second
    with FakeServer({"m": slow}, process=True) as srv:
        proc = subprocess.run(
            _cmd(srv, db, "--concurrency", "6", "--requests", "30", "--workers", "2", "--json"),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        logs = srv.log()
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    rows = _rows(db)
    assert [r[0] for r in rows] == list(range(1, 37))  # 6 warm-up + 30, ids as one process gives
    assert [r[1] for r in rows] == ["ok"] * 36 and {r[2] for r in rows} == {6}
    assert len(logs) == 36 and {r.outcome for r in logs} == {"done"}
    asked = sorted(int(r.body["messages"][-1]["content"].split()[1].rstrip(".")) for r in logs)
    assert asked == list(range(1, 37))  # each request sent exactly once, by one worker
    with sqlite3.connect(db) as c:
        tokens = c.execute("select count(*) from tokens").fetchone()[0]
        workers = {w for (w,) in c.execute("select distinct worker from client_samples")}
        flags = json.loads(c.execute("select params_json from runs").fetchone()[0])["flags"]
    assert tokens == 36 * 6 and workers == {0, 1} and flags["workers"] == "2"
    assert out["client"]["workers"] == 2 and out["client"]["probes"] > 0
    assert out["overall"]["n"] == 30 and out["overall"]["ok"] == 30


def test_an_open_loop_schedule_stays_exact_across_workers(tmp_path):
    db = tmp_path / "o.db"
    with FakeServer({"m": Behavior(tokens=2, ttft_ms=5)}, process=True) as srv:
        proc = subprocess.run(
            _cmd(srv, db, "--rate", "40", "--arrival", "constant", "--requests", "24",
                 "--workers", "3", "--warmup", "0", "--json"),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        logs = srv.log()
    assert proc.returncode == 0, proc.stderr
    rows = _rows(db)
    assert len(rows) == 24 and {r[1] for r in rows} == {"ok"} and len(logs) == 24
    due = [r[3] for r in rows]  # by id: the schedule's order
    assert all(d is not None for d in due)
    assert [b - a for a, b in itertools.pairwise(due)] == pytest.approx([25e6] * 23, abs=2)
    for _, _, _, scheduled, sent, _ in rows:
        assert sent >= scheduled - 1000  # never ahead of its schedule, whichever worker sent it
    lag = json.loads(proc.stdout)["client"]["schedule_lag_ms_p99"]
    assert isinstance(lag, float) and lag >= 0


def _worker_pids(parent: psutil.Process) -> list[int]:
    return [p.pid for p in parent.children() if "worker_entry" in " ".join(p.cmdline())]


def _until(cond, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _count(db, sql: str) -> int:
    try:
        with sqlite3.connect(db) as c:
            return c.execute(sql).fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.parametrize("how", ["ctrl-c", "kill"])
def test_ctrl_c_and_kill_end_the_workers_too(tmp_path, how):
    db = tmp_path / f"{how}.db"
    slow = Behavior(tokens=200, itl_ms=20)  # 4 s a request: some are always in flight
    with FakeServer({"m": slow}, process=True) as srv:
        rec = subprocess.Popen(
            _cmd(srv, db, "--concurrency", "4", "--requests", "1000", "--workers", "2",
                 "--warmup", "0"),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "NO_COLOR": "1"},
        )  # fmt: skip
        try:
            parent = psutil.Process(rec.pid)
            _until(lambda: len(_worker_pids(parent)) == 2, what="two workers")
            workers = [psutil.Process(pid) for pid in _worker_pids(parent)]
            _until(lambda: _count(db, "select count(*) from tokens") > 0, what="tokens on disk")
            rec.send_signal(signal.SIGINT if how == "ctrl-c" else signal.SIGKILL)
            code = rec.wait(60)
        finally:
            rec.kill()
            rec.wait()
        _, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, "a worker outlived its recording"
        assert rec.stderr is not None
        err = rec.stderr.read()
        rec.stderr.close()
    with sqlite3.connect(db) as c:  # (opening through llmtop marks a killed run interrupted)
        status = c.execute("select status from runs").fetchone()[0]
        states = dict(c.execute("select status, count(*) from requests group by status").fetchall())
    if how == "ctrl-c":
        assert code == 130, err
        assert err.splitlines()[-1] == (
            "llmtop: interrupted: run 1 marked cancelled; everything received is kept"
        )
        assert status == "cancelled" and states.get("cancelled", 0) >= 1
        assert "running" not in states  # every request in flight, in every worker, closed
    else:
        assert code == -signal.SIGKILL
        assert status == "running"  # marked interrupted by the next open (tests/faults)


def test_a_dashboard_run_with_workers_streams_every_event_back(tmp_path):
    from llmtop.recorder.recording import RecordingThread

    with FakeServer({"m": Behavior(tokens=3)}, process=True) as srv:
        flags = RunFlags(backend="openai", url=srv.openai_url, model="m", requests=12,
                         concurrency=4, warmup=0, workers="2", sample_hz=2)  # fmt: skip
        seen = []
        rec = RecordingThread(plan_from_flags(flags), tmp_path / "d.db", on_event=seen.append)
        rec.start()
        assert rec.join(60)
    assert rec.result is not None and rec.result.status == "finished", rec.result
    assert rec.result.ok == 12
    finished = [e for e in seen if type(e).__name__ == "RequestFinished"]
    assert sorted(e.request_id for e in finished) == list(range(1, 13))
    assert sum(type(e).__name__ == "TokenReceived" for e in seen) == 36
