"""Golden screens (pytest-textual-snapshot): the dashboard at rest and mid-run with fixed data,
the launcher and the runs screen, each in the dark and the light theme, and the dashboard at
80 x 24. Update with ``pytest tests/snapshots --snapshot-update`` after looking at the diff.

A screen that fills itself from a worker (the runs list, the launcher's model list) is shot once
what the worker brings is on it: waiting for the workers alone raced with the screen starting
them, and on a busy machine the shot caught the runs table empty (its columns as wide as their
headers) or the model list still asking. A DataTable measures its columns on its next idle, after
its rows are drawn: the runs screen is shot once its columns are as wide as the rows say."""

from __future__ import annotations

import time

import pytest
from demo import DemoApp
from support.dashboard import drawn_at, wait_for
from support.runs import FakeRequest, write_run
from textual.widgets import Select

from llmtop.app.screens.launcher import LauncherScreen
from llmtop.app.screens.runs import RunsScreen
from llmtop.app.widgets.runs_table import COLUMNS, RunsTable
from llmtop.storage.db import open_database
from llmtop.storage.writer import RunInfo

THEMES = ["llmtop-dark", "llmtop-light"]


@pytest.fixture()
def utc(monkeypatch):
    """The runs list shows start times in local time: the golden screens are in UTC."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture()
def history_db(tmp_path, utc):
    """Three runs with fixed timings and fixed start times (the list shows them)."""
    path = tmp_path / "runs.db"
    for k, (itl, name, scenario) in enumerate(
        [(20, "baseline", "basic"), (20, "again", "basic"), (40, "4 workers", "concurrency")]
    ):
        reqs = [FakeRequest(900 * i, [900 * i + 180 + 10 * (i % 4) + itl * j for j in range(24)],
                            step=("short", "medium", "long")[i % 3]) for i in range(12)]  # fmt: skip
        if k == 2:
            reqs.append(FakeRequest(12000, [], end_ms=12005, fail="http_status", message="500"))
        write_run(path, reqs, info=RunInfo(name=name, scenario=scenario, backend="ollama",
                                           base_url="http://127.0.0.1:11434", model="llama3.2:1b"))  # fmt: skip
    db = open_database(path)
    for run_id in (1, 2, 3):
        db.execute("update runs set started_at = ? where id = ?",
                   [f"2026-05-0{run_id}T09:1{run_id}:00.000+00:00", run_id])  # fmt: skip
    db.conn.commit()
    db.close()
    return path


async def settle(pilot) -> None:
    """Wait for every worker (model list, storage queries) and the refresh after it."""
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


@pytest.mark.parametrize("theme", THEMES)
def test_dashboard_mid_run(snap_compare, theme, tmp_path):
    app = DemoApp(mid_run=True, theme=theme, config_dir=tmp_path)
    assert snap_compare(app, terminal_size=(140, 42), run_before=settle)


@pytest.mark.parametrize("theme", THEMES)
def test_dashboard_at_rest(snap_compare, theme, tmp_path):
    app = DemoApp(mid_run=False, theme=theme, config_dir=tmp_path)
    assert snap_compare(app, terminal_size=(120, 36), run_before=settle)


def test_dashboard_at_80x24(snap_compare, tmp_path):
    app = DemoApp(mid_run=True, config_dir=tmp_path)
    assert snap_compare(app, terminal_size=(80, 24), run_before=settle)


@pytest.mark.parametrize("theme", THEMES)
def test_launcher(snap_compare, theme, tmp_path):
    app = DemoApp(mid_run=True, theme=theme, config_dir=tmp_path)

    async def open_launcher(pilot) -> None:
        await settle(pilot)
        await pilot.press("l")

        def asked() -> bool:  # port 9 refuses at once: the model list says so
            screen = app.screen
            return isinstance(screen, LauncherScreen) and (
                screen.query_one("#models", Select).prompt == "(not reachable)"
            )

        await wait_for(pilot, asked)
        await settle(pilot)

    assert snap_compare(app, terminal_size=(100, 30), run_before=open_launcher)


@pytest.mark.parametrize("theme", THEMES)
def test_runs_screen(snap_compare, theme, tmp_path, history_db):
    app = DemoApp(mid_run=False, theme=theme, config_dir=tmp_path, db_path=history_db)

    async def open_runs(pilot) -> None:
        await pilot.press("r")

        def listed() -> bool:  # the three runs, down to the last row drawn (border, header, 3)
            screen = app.screen
            if not isinstance(screen, RunsScreen) or not screen.query(RunsTable):
                return False
            table = screen.query_one(RunsTable)
            started = table.ordered_columns[COLUMNS.index("started")]
            return (
                len(table.runs) == 3
                and started.content_width == len("2026-05-03 09:13:00")  # measured on idle
                and drawn_at(app, table, (10, 4), row=2)
            )

        await wait_for(pilot, listed)
        await settle(pilot)

    assert snap_compare(app, terminal_size=(120, 30), run_before=open_runs)
