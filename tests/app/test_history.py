"""The runs, run-detail and compare screens on runs written through the real writer."""

from __future__ import annotations

import pytest
from support.dashboard import drawn_at, make_app, on_screen, wait_for
from support.runs import FakeRequest, write_run

from llmtop.app.screens.compare import CompareScreen
from llmtop.app.screens.help import HelpScreen
from llmtop.app.screens.run_detail import RunDetailScreen
from llmtop.app.screens.runs import RunsScreen, load_run_items
from llmtop.app.widgets.report_view import ReportView
from llmtop.app.widgets.runs_table import RunsTable
from llmtop.storage import queries
from llmtop.storage.db import open_readonly
from llmtop.storage.writer import RunInfo


@pytest.fixture()
def two_runs(db_path):
    """Run 1: TTFT 200 ms, ITL 20 ms; run 2 the same with ITL 40 ms."""
    ids = []
    for itl, name in ((20, "fast"), (40, "slow")):
        reqs = [
            FakeRequest(1000 * i, [1000 * i + 200 + itl * k for k in range(10)], step=s)
            for i, s in enumerate(["a"] * 6 + ["b"] * 6)
        ]
        ids.append(write_run(db_path, reqs, info=RunInfo(name=name, backend="ollama", model="m",
                                                         scenario="basic")))  # fmt: skip
    return ids


def test_history_rows_carry_the_stored_numbers(db_path, two_runs):
    items = load_run_items(db_path)
    assert [i.id for i in items] == two_runs[::-1]
    db = open_readonly(db_path)
    for item in items:
        s = queries.run_summary(db, item.id, with_itl=False)
        assert s is not None
        assert (item.name, item.requests, item.errors) == (s.run.name, 12, 0)
        assert item.ttft_p50_ms == pytest.approx(s.overall.ttft_ms.p50)
        assert item.decode_tps == pytest.approx(s.overall.decode_tps.mean)
    assert items[0].decode_tps == pytest.approx(25.0) and items[1].decode_tps == pytest.approx(50.0)


async def test_open_a_run_and_compare_two(tmp_path, db_path, two_runs):
    first, second = two_runs
    app = make_app(db_path, tmp_path / "cfg")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("r")
        await wait_for(pilot, on_screen(app, RunsScreen, RunsTable))
        table = app.screen.query_one(RunsTable)
        await wait_for(pilot, lambda: len(table.runs) == 2 and table.has_focus)
        await pilot.press("down", "enter")  # the older run
        await wait_for(pilot, on_screen(app, RunDetailScreen, ReportView))
        assert app.screen.run_id == first
        view = app.screen.query_one(ReportView)
        await wait_for(pilot, lambda: len(view.items) > 0)
        text = app.export_screenshot()
        assert "fast" in text and "short" not in text  # the run's own name and steps
        await pilot.press("escape")
        await wait_for(pilot, on_screen(app, RunsScreen, RunsTable))
        await wait_for(pilot, lambda: app.screen.query_one(RunsTable).has_focus)
        await pilot.press("up", "c")  # the newest against the one before it
        await wait_for(pilot, on_screen(app, CompareScreen, ReportView))
        assert (app.screen.run_a, app.screen.run_b) == (first, second)
        view = app.screen.query_one(ReportView)
        await wait_for(pilot, lambda: len(view.items) > 0)
        shot = app.export_screenshot()
        assert "+100.0%" in shot and "worse" in shot  # TPOT doubled
        await pilot.press("x")  # swap: now the faster run is the candidate
        await wait_for(pilot, lambda: app.screen.run_a == second and len(view.items) > 0)
        assert "better" in app.export_screenshot()


async def test_missing_run_and_missing_database_are_messages(tmp_path, db_path):
    app = make_app(tmp_path / "none.db", tmp_path / "cfg")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("r")
        await wait_for(pilot, on_screen(app, RunsScreen, RunsTable))
        table = app.screen.query_one(RunsTable)
        await wait_for(pilot, lambda: "no database" in str(table.border_subtitle))
        assert app.is_running  # a notification, not a crash
        app.push_screen(RunDetailScreen(99))
        await wait_for(pilot, on_screen(app, RunDetailScreen, ReportView))
        view = app.screen.query_one(ReportView)
        await wait_for(pilot, lambda: "no database" in view.placeholder)


async def test_help_screen_opens_and_closes(tmp_path, db_path):
    app = make_app(db_path, tmp_path / "cfg")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        await wait_for(pilot, on_screen(app, HelpScreen))
        await wait_for(pilot, lambda: "launch&#160;a&#160;run" in app.export_screenshot())
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, HelpScreen))


async def test_the_mouse_works(tmp_path, db_path, two_runs):
    """Click the footer's Runs key, then click a run twice (select, open), then Back."""
    from textual.widgets._footer import FooterKey

    app = make_app(db_path, tmp_path / "cfg")

    def footer_key(key: str) -> FooterKey | None:
        """The footer's key, once it is laid out (a click on a zero-size region hits nothing)."""
        return next(
            (k for k in app.screen.query(FooterKey) if k.key == key and k.region.width), None
        )

    async with app.run_test(size=(120, 36)) as pilot:
        # Each click waits until the layout puts its target where it aims (drawn_at).
        await wait_for(pilot, lambda: drawn_at(app, footer_key("r")))
        assert await pilot.click(footer_key("r"))
        await wait_for(pilot, on_screen(app, RunsScreen, RunsTable))
        table = app.screen.query_one(RunsTable)
        older = (10, 3)  # border, header, the newest run, then the older one
        await wait_for(pilot, lambda: len(table.runs) == 2 and drawn_at(app, table, older, row=1))
        assert await pilot.click(table, offset=older)  # selects it
        await wait_for(pilot, lambda: table.cursor_row == 1)
        assert isinstance(app.screen, RunsScreen)
        assert await pilot.click(table, offset=older)  # opens it
        await wait_for(pilot, on_screen(app, RunDetailScreen, ReportView))
        assert app.screen.run_id == two_runs[0]
        await wait_for(pilot, lambda: drawn_at(app, footer_key("escape")))
        assert await pilot.click(footer_key("escape"))
        await wait_for(pilot, on_screen(app, RunsScreen, RunsTable))
