"""The dashboard against a real fake server: launch ``basic`` from the launcher, watch the live
numbers fill, check them against the database and against ``llmtop record``, stop a run, open
it in the runs screen, compare two runs, switch theme."""

from __future__ import annotations

import json
import os
import signal

import pytest
from support import wire_truth
from support.cli import run_llmtop
from support.dashboard import MODEL, make_app, on_screen, wait_for
from textual.notifications import Notify
from textual.widgets import Input, Select

from llmtop.app.app import stored_status
from llmtop.app.screens.compare import CompareScreen
from llmtop.app.screens.launcher import LauncherScreen
from llmtop.app.screens.run_detail import RunDetailScreen
from llmtop.app.screens.runs import RunsScreen
from llmtop.app.widgets.histogram import Histogram
from llmtop.app.widgets.metric_trend import MetricTrend
from llmtop.app.widgets.percentile_table import PercentileTable
from llmtop.app.widgets.report_view import ReportView
from llmtop.app.widgets.runs_table import RunsTable
from llmtop.storage import queries
from llmtop.storage.db import open_readonly

pytestmark = pytest.mark.slow


def finished(app) -> bool:
    return app.session.recording is None and app.run_status.state in (
        "finished", "cancelled", "failed",
    )  # fmt: skip


async def test_launch_basic_watch_stop_open_compare_and_theme(fake_server, db_path, tmp_path):
    fake_server.log(clear=True)
    app = make_app(db_path, tmp_path / "cfg", backend="ollama", url=fake_server.url, model=MODEL,
                   scenario="basic", requests=2, max_tokens=12)  # fmt: skip
    async with app.run_test(size=(140, 44)) as pilot:
        # launch from the launcher: it opens with the command line's values, ctrl+s starts
        await pilot.press("l")
        await wait_for(pilot, on_screen(app, LauncherScreen))
        # the model list is the server's own
        models = app.screen.query_one("#models", Select)
        await wait_for(pilot, lambda: models.prompt == "pick one")
        models.value = "m:latest"  # picking one fills the model field
        await wait_for(pilot, lambda: app.screen.query_one("#model", Input).value == "m:latest")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: not isinstance(app.screen, LauncherScreen))
        await wait_for(pilot, lambda: app.run_status.state == "running")
        await wait_for(pilot, lambda: finished(app))
        assert app.run_status.state == "finished", app.run_status
        run_id = app.run_status.run_id
        assert run_id is not None and app.run_status.scenario == "basic"

        # the widgets were filled from the live snapshot
        await wait_for(pilot, lambda: app.dashboard.query_one(PercentileTable).table.ok == 6)
        dash = app.dashboard
        ttft_trend = dash.query_one("#ttft-trend", MetricTrend)
        assert len(ttft_trend.values) == 6 and ttft_trend.stats.n == 6
        assert len(dash.query_one("#tps-trend", MetricTrend).values) == 6
        await wait_for(pilot, lambda: len(dash.query_one("#e2e-hist", Histogram).values) == 6)
        itl = dash.query_one("#itl-hist", Histogram)
        await wait_for(pilot, lambda: len(itl.values) == 6 * 11)  # 11 gaps per 12-token answer
        live = dash.query_one(PercentileTable).table

        # ... and equal what the database holds for the same run
        db = open_readonly(db_path)
        stored = queries.run_summary(db, run_id)
        assert stored is not None and stored.run.status == "finished"
        o = stored.overall
        assert (live.ok, live.errors, live.warmup) == (o.ok, o.errors, o.warmup) == (6, 0, 1)
        for name in ("ttft_ms", "tpot_ms", "e2e_ms", "decode_tps"):
            assert getattr(live, name) == pytest.approx(getattr(o, name)), name
        assert live.req_per_s == pytest.approx(o.req_per_s)
        # the server's timings, read back: the stored run against the server's own log
        # (basic is sequential: requests pair with the log in order)
        print(wire_truth.check(*wire_truth.in_order(wire_truth.from_database(db, run_id),
                                                    fake_server.log())))  # fmt: skip

        # a second, longer run, stopped half-way: cancelled, what arrived kept
        app.start_run(app.launch_settings.replace(requests=50, name="stopped"))
        await wait_for(pilot, lambda: app.aggregator.snapshot().table.ok >= 2)
        await pilot.press("s")
        await wait_for(pilot, lambda: finished(app))
        assert app.run_status.state == "cancelled"
        second = app.run_status.run_id
        stopped = queries.run_summary(db, second)
        assert stopped is not None and stopped.run.status == "cancelled"
        assert 2 <= stopped.overall.ok < 150

        # the runs screen lists both; Enter opens the one under the cursor (the newest)
        await pilot.press("r")
        await wait_for(pilot, on_screen(app, RunsScreen))
        table = app.screen.query_one(RunsTable)
        await wait_for(pilot, lambda: len(table.runs) == 2 and table.has_focus)
        assert [r.id for r in table.runs] == [second, run_id]
        assert table.runs[1].ttft_p50_ms == pytest.approx(o.ttft_ms.p50)
        await pilot.press("enter")
        await wait_for(pilot, on_screen(app, RunDetailScreen))
        await wait_for(pilot, lambda: len(app.screen.query_one(ReportView).items) > 0)
        assert app.screen.run_id == second
        await pilot.press("escape")

        # mark both runs and compare them (keys go to the table once it has the focus again)
        await wait_for(pilot, on_screen(app, RunsScreen))
        await wait_for(pilot, lambda: app.screen.query_one(RunsTable).has_focus)
        await pilot.press("space", "down", "space", "c")
        await wait_for(pilot, on_screen(app, CompareScreen))
        assert (app.screen.run_a, app.screen.run_b) == (second, run_id)
        await wait_for(pilot, lambda: len(app.screen.query_one(ReportView).items) > 0)
        await pilot.press("escape", "escape")

        # switch theme with the key; the choice is remembered
        before = app.theme
        await pilot.press("t")
        assert app.theme != before
        saved = json.loads((tmp_path / "cfg" / "settings.json").read_text())
        assert saved["theme"] == app.theme
        db.close()


async def test_the_dashboard_measures_what_record_measures(fake_server, db_path, tmp_path):
    """The same server measured by ``llmtop record`` and by the dashboard (which measures in a
    child process, as record does): both runs read the server's own log of each request the
    same way (support/wire_truth.py), and the dashboard shows what it stored. How close the two
    read on a quiet machine (TTFT within 2 ms) is bench/accuracy.py's to print."""
    fake_server.log(clear=True)
    proc = run_llmtop("record", "--db", str(db_path), "--backend", "ollama", "--url",
                      fake_server.url, "--model", MODEL, "--requests", "6", "--max-tokens", "12",
                      "--unique-prompts", "--warmup", "0", "--json", "--quiet")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    recorded = json.loads(proc.stdout)
    record_logs = fake_server.log(clear=True)

    app = make_app(db_path, tmp_path / "cfg", backend="ollama", url=fake_server.url, model=MODEL,
                   requests=6, max_tokens=12, unique_prompts=True, warmup=0, scenario=None)  # fmt: skip
    async with app.run_test(size=(120, 40)) as pilot:
        assert app.start_run(app.launch_settings)
        await wait_for(pilot, lambda: finished(app))
        assert app.run_status.state == "finished"
        dash_run = app.run_status.run_id
        live = app.aggregator.snapshot().table
    dash_logs = fake_server.log()

    db = open_readonly(db_path)
    for run_id, logs in ((recorded["run"]["id"], record_logs), (dash_run, dash_logs)):
        by_number = {wire_truth.request_number(log.body): log for log in logs}
        print(wire_truth.check(wire_truth.from_database(db, run_id), by_number))
    stored = queries.run_summary(db, dash_run)
    assert stored is not None and live.ok == stored.overall.ok == 6
    assert live.ttft_ms == pytest.approx(stored.overall.ttft_ms)
    assert recorded["overall"]["n"] == 6


async def test_quitting_mid_run_closes_it_cancelled(fake_server, db_path, tmp_path):
    app = make_app(db_path, tmp_path / "cfg", backend="ollama", url=fake_server.url, model=MODEL,
                   requests=100, max_tokens=12, scenario=None)  # fmt: skip
    async with app.run_test(size=(100, 30)) as pilot:
        assert app.start_run(app.launch_settings)
        await wait_for(pilot, lambda: app.aggregator.snapshot().table.ok >= 1)
        run_id = app.run_status.run_id
        await pilot.press("q")
    # the app waited for the recording to close the run: cancelled, what arrived kept
    run = queries.get_run(open_readonly(db_path), run_id)
    assert run is not None and run.status == "cancelled" and 1 <= run.n_requests < 100
    # what `llmtop` prints on the way out: the stored status, not the last tick's "running"
    assert stored_status(db_path, run_id) == "cancelled"


async def test_a_killed_recording_process_is_reported_with_its_exit_code(
    fake_server, db_path, tmp_path
):
    """The child that measures dies (OOM killer, kill -9): the dashboard says how it ended."""
    app = make_app(db_path, tmp_path / "cfg", backend="ollama", url=fake_server.url, model=MODEL,
                   requests=1000, max_tokens=12, scenario=None)  # fmt: skip
    notes: list[str] = []

    def seen(message: object) -> None:
        if isinstance(message, Notify):
            notes.append(message.notification.message)

    async with app.run_test(size=(100, 30), message_hook=seen) as pilot:
        assert app.start_run(app.launch_settings)
        await wait_for(pilot, lambda: app.aggregator.snapshot().table.ok >= 1)
        recording = app.session.recording
        assert recording is not None and recording.pid is not None
        os.kill(recording.pid, signal.SIGKILL)
        await wait_for(pilot, lambda: finished(app))
        assert app.run_status.state == "failed"
        await wait_for(pilot, lambda: any("exit code" in n for n in notes))
    (note,) = [n for n in notes if "exit code" in n]
    assert "killed by SIGKILL, exit code -9" in note, note


async def test_watching_a_server_between_runs(fake_server, db_path, tmp_path):
    """No run of ours: the machine and the server's loaded models still show, live."""
    app = make_app(db_path, tmp_path / "cfg", backend="ollama", url=fake_server.url, watch=True)
    async with app.run_test(size=(120, 36)) as pilot:
        snap = app.aggregator.snapshot

        def watched() -> bool:
            s = snap()
            return s.resources is not None and any(v.models for v in s.servers)

        await wait_for(pilot, watched)
        s = snap()
        assert s.run_id is None and s.table.ok == 0
        assert [m.name for v in s.servers for m in v.models] == [MODEL]
        assert s.resources is not None and s.resources.mem_total_bytes > 0
        # the fake server is a local process: found by its port, its memory read
        await wait_for(pilot, lambda: (r := snap().resources) is not None and r.server_rss_bytes)


async def test_scenario_on_the_command_line_starts_at_once(fake_server, db_path, tmp_path):
    app = make_app(db_path, tmp_path / "cfg", backend="ollama", url=fake_server.url, model=MODEL,
                   scenario="basic", requests=1, max_tokens=12, warmup=0, start_now=True)  # fmt: skip
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: finished(app))
        assert app.run_status.state == "finished" and app.run_status.scenario == "basic"
        assert app.aggregator.snapshot().table.ok == 3


async def test_a_tick_while_the_app_shuts_down_does_nothing(db_path, tmp_path):
    """The tick timer runs in a task of its own: on a busy machine it can fire while shutdown
    is removing the screens' widgets (seen as NoMatches '#ttft-trend' at exit). Here a tick
    with a new snapshot comes right after the screens were closed."""
    app = make_app(db_path, tmp_path / "cfg")
    close_all = app._close_all
    ticked: list[bool] = []

    async def close_then_tick() -> None:
        await close_all()
        app._snap = None  # a snapshot the dashboard has not seen
        app.tick()
        ticked.append(True)

    app._close_all = close_then_tick
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.dashboard.is_mounted)
    assert ticked == [True]
