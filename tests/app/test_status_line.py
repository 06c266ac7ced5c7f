"""The dashboard's first line says what a starting run waits for, and the empty requests table
says it too, instead of "press l"."""

from __future__ import annotations

from support.dashboard import make_app, wait_for

from llmtop.app.widgets.requests_table import RequestsTable
from llmtop.app.widgets.status_line import RunStatus, StatusLine


async def test_a_starting_run_says_what_it_waits_for(tmp_path, db_path):
    app = make_app(db_path, tmp_path / "cfg")
    async with app.run_test(size=(140, 30)) as pilot:
        waiting = "starting the llmtop engine (4 s): loading smollm2"
        app.dashboard.status = RunStatus(backend="engine", state="starting", waiting=waiting)
        line = app.dashboard.query_one(StatusLine)
        await wait_for(pilot, lambda: waiting in str(line.render()))
        table = app.dashboard.query_one(RequestsTable)
        await wait_for(pilot, lambda: waiting in str(table.render()))
        app.dashboard.status = RunStatus(backend="engine", state="running", run_id=3)
        await wait_for(pilot, lambda: "press l" in str(table.render()))
        assert waiting not in str(line.render())
