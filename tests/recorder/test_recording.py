"""A whole run through the real writer and database: params, statuses, stop, SLO stop, thread."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import sqlite3
import threading

from support.scripted_backend import ScriptedBackend

from llmtop.core.events import RequestStarted, SourceDown, TokenReceived
from llmtop.core.metrics import Slo
from llmtop.recorder.recording import Recording, RecordingThread, RecordPlan
from llmtop.scenarios.loader import load_scenario
from llmtop.scenarios.model import Overrides, Prompt, Scenario, Step, apply_overrides
from llmtop.storage import queries
from llmtop.storage.db import open_readonly

P = (Prompt("a", "alpha"),)


def plan_of(scenario: Scenario, **kw) -> RecordPlan:
    """A plan of ``scenario``, without the default warm-up unless it asks for one: these tests
    count requests exactly (warm-up has tests of its own)."""
    if scenario.warmup is None:
        scenario = dataclasses.replace(scenario, warmup=0)
    return RecordPlan(scenario=scenario, backend="scripted", model="m", **kw)


async def run(tmp_path, scenario: Scenario, backend: ScriptedBackend, **kw):
    rec = Recording(
        plan_of(scenario, **kw), tmp_path / "r.db", backend_factory=lambda p, _s: backend
    )
    return rec, await rec.run()


def requests_of(path, run_id):
    db = open_readonly(path)
    return list(db.query("select * from requests where run_id = ? order by id", [run_id]))


async def test_a_run_is_stored_with_the_params_the_reports_read(tmp_path):
    scenario = apply_overrides(load_scenario("concurrency"), Overrides(requests=4, warmup=1))
    be = ScriptedBackend(ttft_ms=1, tokens=3)
    rec, res = await run(tmp_path, scenario, be, name="label", flags={"requests": 4})
    assert res.status == "finished" and res.error is None
    assert (res.sent, res.ok, res.errors) == (16, 16, 0)
    assert be.entered and be.exited
    db = open_readonly(tmp_path / "r.db")
    run_row = queries.get_run(db, res.run_id)
    assert (run_row.status, run_row.name, run_row.scenario, run_row.model) == (
        "finished", "label", "concurrency", "m"
    )  # fmt: skip
    p = run_row.params
    assert p["scenario"] == "concurrency"
    assert [s["name"] for s in p["steps"]] == ["c1", "c2", "c4", "c8"]
    assert set(p["steps"][0]) >= {"name", "requests", "duration_s", "concurrency", "rate",
                                  "arrival", "max_tokens", "temperature", "prompts"}  # fmt: skip
    assert p["steps"][3]["concurrency"] == 8 and p["steps"][0]["prompts"] == ["medium"]
    assert p["slo"] == {"ttft_ms": None, "tpot_ms": None, "e2e_ms": None}
    assert p["flags"]["requests"] == 4 and p["flags"]["store_tokens"] is True
    host = run_row.host
    assert host["cores_logical"] >= 1 and host["mem_total_bytes"] > 0 and "gpus" in host
    rows = requests_of(tmp_path / "r.db", res.run_id)
    assert len(rows) == 17 and rows[0]["warmup"] == 1 and rows[0]["step"] == "c1"
    assert {r["status"] for r in rows} == {"ok"}
    assert [r["concurrency"] for r in rows[1:]] == [1] * 4 + [2] * 4 + [4] * 4 + [8] * 4
    summary = queries.run_summary(db, res.run_id)
    assert [s.step for s in summary.steps] == ["c1", "c2", "c4", "c8"]
    assert summary.overall.n == 16 and summary.overall.warmup == 1
    assert rec.tally.warmup == 1
    downs = {r["source"] for r in db.query("select source from source_down")}
    assert "server:ollama" not in downs and "server:metrics" in downs  # scripted: no /metrics


async def test_every_request_failing_fails_the_run_with_the_reason(tmp_path):
    be = ScriptedBackend(fail=lambda req: "http_status")
    _, res = await run(tmp_path, Scenario("s", (Step("x", P, requests=3),)), be)
    assert res.status == "failed" and res.failure == "requests"
    assert (
        "every request failed (3 http_status)" in res.error and "scripted http_status" in res.error
    )
    db = open_readonly(tmp_path / "r.db")
    assert queries.get_run(db, res.run_id).status == "failed"


async def test_some_failures_still_finish(tmp_path):
    be = ScriptedBackend(fail=lambda req: "timeout" if req.request_id == 2 else None)
    _, res = await run(tmp_path, Scenario("s", (Step("x", P, requests=3),)), be)
    assert res.status == "finished" and (res.ok, res.errors) == (2, 1)
    rows = requests_of(tmp_path / "r.db", res.run_id)
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    assert rows[1]["error_kind"] == "timeout"


async def test_unreachable_backend_leaves_a_failed_run_naming_it(tmp_path):
    be = ScriptedBackend(enter_error="cannot connect to http://127.0.0.1:9: refused")
    _, res = await run(tmp_path, Scenario("s", (Step("x", P, requests=3),)), be)
    assert res.status == "failed" and res.failure == "source"
    assert "http://127.0.0.1:9" in res.error
    row = queries.get_run(open_readonly(tmp_path / "r.db"), res.run_id)
    assert row.status == "failed" and "refused" in row.error


async def test_unknown_model_fails_at_check(tmp_path):
    be = ScriptedBackend(models=("other",))
    rec = Recording(plan_of(Scenario("s", (Step("x", P),))), tmp_path / "r.db",
                    backend_factory=lambda p, _s: be)  # fmt: skip
    res = await rec.run()
    assert res.status == "failed" and "not found" in res.error and res.sent == 0


async def test_no_model_given_picks_the_only_one_or_asks(tmp_path):
    scenario = Scenario("s", (Step("x", P, requests=1),))
    plan = RecordPlan(scenario=scenario, backend="scripted")
    res = await Recording(
        plan, tmp_path / "r.db", backend_factory=lambda p, _s: ScriptedBackend()
    ).run()
    assert res.status == "finished" and res.model == "m"
    two = ScriptedBackend(models=("a", "b"))
    res = await Recording(plan, tmp_path / "r.db", backend_factory=lambda p, _s: two).run()
    assert res.failure == "usage" and "--model" in res.error and "a, b" in res.error


async def test_stop_cancels_in_flight_and_keeps_what_arrived(tmp_path):
    gate = asyncio.Event()  # never set: requests hold after their first token
    be = ScriptedBackend(ttft_ms=0, tokens=5, gate=gate)
    seen_tokens = asyncio.Event()
    rec = Recording(plan_of(Scenario("s", (Step("x", P, requests=10, concurrency=3),))),
                    tmp_path / "r.db", backend_factory=lambda p, _s: be,
                    on_event=lambda e: seen_tokens.set() if isinstance(e, TokenReceived) and e.request_id == 3 else None)  # fmt: skip
    task = asyncio.create_task(rec.run())
    await seen_tokens.wait()
    rec.stop()
    res = await task
    assert res.status == "cancelled" and res.cancelled == 3 and res.ok == 0
    rows = requests_of(tmp_path / "r.db", res.run_id)
    assert [r["status"] for r in rows] == ["cancelled"] * 3
    assert all(r["chunks"] == 1 and r["ttft_ms"] is not None for r in rows)
    db = open_readonly(tmp_path / "r.db")
    assert queries.get_run(db, res.run_id).status == "cancelled"
    n_tokens = next(db.query("select count(*) n from tokens where run_id = ?", [res.run_id]))["n"]
    assert n_tokens == 3


async def test_rate_sweep_stops_when_the_slos_break(tmp_path):
    slow = {"r2"}  # the second step misses the TTFT objective

    class Slowing(ScriptedBackend):
        async def stream(self, req, emit):
            self.ttft_ms = 60 if req.step in slow else 1
            await super().stream(req, emit)

    steps = tuple(Step(n, P, requests=3, rate=200.0, arrival="constant", concurrency=None)
                  for n in ("r1", "r2", "r3"))  # fmt: skip
    scenario = Scenario("sweep", steps, slo=Slo(ttft_ms=30), stop_below_goodput=0.9)
    _, res = await run(tmp_path, scenario, Slowing())
    assert res.status == "finished" and res.steps_run == ("r1", "r2")
    assert "'r2'" in res.stopped_early and "1 later step" in res.stopped_early
    rows = requests_of(tmp_path / "r.db", res.run_id)
    assert {r["step"] for r in rows} == {"r1", "r2"}


async def test_on_event_sees_every_event_and_its_errors_do_not_stop_the_run(tmp_path):
    seen = []

    def on_event(ev):
        seen.append(ev)
        raise RuntimeError("a broken display")

    be = ScriptedBackend(tokens=2)
    rec = Recording(plan_of(Scenario("s", (Step("x", P, requests=2),))), tmp_path / "r.db",
                    backend_factory=lambda p, _s: be, on_event=on_event)  # fmt: skip
    res = await rec.run()
    assert res.status == "finished"
    kinds = [type(e).__name__ for e in seen if not isinstance(e, SourceDown)]
    requests_only = [k for k in kinds if k.startswith(("Request", "Token"))]
    assert requests_only == ["RequestStarted", "TokenReceived", "TokenReceived",
                             "RequestFinished"] * 2  # fmt: skip
    assert rec.on_event_errors == len(seen)


def test_recording_thread_runs_and_stops_from_another_thread(tmp_path):
    started = threading.Event()
    be = ScriptedBackend(ttft_ms=0, tokens=3, gate=None)
    hold = {}

    def on_event(ev):  # called on the recording thread
        if isinstance(ev, RequestStarted) and ev.request_id == 2:
            hold["thread"] = threading.current_thread().name
            started.set()

    scenario = Scenario("s", (Step("x", P, requests=None, duration_s=60, concurrency=1),))
    th = RecordingThread(plan_of(scenario), tmp_path / "r.db", on_event,
                         backend_factory=lambda p, _s: be)  # fmt: skip
    th.start()
    assert started.wait(30)
    assert th.run_created.is_set() and th.run_id == 1
    assert hold["thread"] == "llmtop-recording"
    th.stop()
    assert th.join(10)
    assert th.error is None and th.result is not None
    assert th.result.status == "cancelled" and th.result.ok >= 1
    assert queries.get_run(open_readonly(tmp_path / "r.db"), 1).status == "cancelled"


def test_recording_thread_stopped_before_it_starts_records_nothing(tmp_path):
    done = []
    th = RecordingThread(plan_of(Scenario("s", (Step("x", P, requests=5),))), tmp_path / "r.db",
                         on_done=done.append, backend_factory=lambda p, _s: ScriptedBackend())  # fmt: skip
    th.stop()
    th.start()
    assert th.join(10)
    assert th.result.status == "cancelled" and th.result.sent == 0
    assert done == [th.result]


async def test_a_full_disk_fails_the_run_and_keeps_what_was_written(tmp_path):
    path = tmp_path / "r.db"

    class FillsTheDisk(ScriptedBackend):
        async def stream(self, req, emit):
            if req.request_id == 2:  # cap the file just above its size: the next batch fails
                w = rec._writer
                await w.flush()
                pages = sqlite3.connect(path).execute("pragma page_count").fetchone()[0]
                await w._call(lambda: w._db.execute(f"pragma max_page_count = {pages + 1}"))
            await super().stream(req, emit)

    be = FillsTheDisk(ttft_ms=0, itl_ms=0, tokens=3000)
    rec = Recording(plan_of(Scenario("s", (Step("x", P, requests=10),))), path,
                    backend_factory=lambda p, _s: be)  # fmt: skip
    res = await rec.run()
    assert res.status == "failed" and res.failure == "storage"
    assert "disk full" in res.error and str(path) in res.error
    assert res.sent < 10  # it stopped sending
    conn = sqlite3.connect(path)
    assert conn.execute("select status from runs").fetchone() == ("failed",)
    assert conn.execute("select status from requests where id = 1").fetchone() == ("ok",)
    assert conn.execute("select count(*) from tokens where request_id = 1").fetchone()[0] == 3000
    assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"


async def test_what_the_start_waits_for_is_heard_then_cleared(tmp_path):
    """The backend's start (an engine loading) is told to the recording's status sink; once
    requests go out the status is empty, so displays show the requests instead."""
    heard: list[tuple[str, bool]] = []
    be = ScriptedBackend()

    def factory(plan, on_status):
        on_status("loading the fake model", notice=False)
        on_status("no fake Ollama: measuring the fake engine", notice=True)
        return be

    rec = Recording(
        plan_of(Scenario("s", (Step("x", P, requests=2),))), tmp_path / "r.db",
        backend_factory=factory, on_status=lambda t, notice=False: heard.append((t, notice)),
    )  # fmt: skip
    res = await rec.run()
    assert res.status == "finished"
    assert ("loading the fake model", False) in heard
    assert ("no fake Ollama: measuring the fake engine", True) in heard
    assert any(t.startswith("checking that") for t, _ in heard)
    assert rec.status == ""


async def test_the_setup_heap_is_frozen_while_requests_run_and_thawed_after(tmp_path):
    """gc.freeze() before the first request: a full collection then walks only the run's own
    objects (12-17 ms of stopped event loop otherwise, measured with bench/fidelity.py); after
    the run everything is collectable again (the dashboard's recordings share one process)."""
    frozen: list[int] = []

    def note(_req):
        frozen.append(gc.get_freeze_count())
        return None

    scenario = apply_overrides(load_scenario("concurrency"), Overrides(requests=2))
    _, res = await run(tmp_path, scenario, ScriptedBackend(ttft_ms=1, tokens=2, fail=note))
    assert res.status == "finished" and len(frozen) == 8
    assert min(frozen) > 1000  # the imports' objects, at least
    assert gc.get_freeze_count() == 0
