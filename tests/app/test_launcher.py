"""The launcher: it opens with the command line's values, shows a bad value on its field (and
stays open), and answers the settings ``llmtop record`` would accept."""

from __future__ import annotations

from support.dashboard import make_app, on_screen, refused_url, wait_for
from textual.widgets import Input, Select, Static

from llmtop.app.screens.launcher import LauncherScreen
from llmtop.recorder.flags import RunFlags, plan_from_flags
from llmtop.storage import queries
from llmtop.storage.db import open_readonly


async def test_bad_values_stay_on_their_field(tmp_path, db_path):
    app = make_app(db_path, tmp_path / "cfg", backend="ollama", url=refused_url(), model="m",
                   requests=7)  # fmt: skip
    answers: list[RunFlags | None] = []
    async with app.run_test(size=(80, 24)) as pilot:
        app.push_screen(LauncherScreen(app.launch_settings), answers.append)
        await wait_for(pilot, on_screen(app, LauncherScreen))
        screen = app.screen
        requests = screen.query_one("#requests", Input)
        assert requests.value == "7"  # the command line's value
        # the server does not answer: said in the model list, no crash
        await wait_for(pilot, lambda: screen.query_one("#models", Select).prompt != "(asking…)")
        assert screen.query_one("#models", Select).prompt == "(not reachable)"

        requests.value = "0"
        await pilot.press("ctrl+s")
        error = screen.query_one("#launch-error", Static)
        assert "requests" in str(error.render()) and "greater than or equal to 1" in str(
            error.render()
        )
        assert requests.has_class("-invalid") and app.screen is screen and answers == []

        requests.value = "3"
        screen.query_one("#temperature", Input).value = "7"
        await pilot.press("ctrl+s")
        assert screen.query_one("#temperature", Input).has_class("-invalid")
        assert not requests.has_class("-invalid") and app.screen is screen

        screen.query_one("#temperature", Input).value = ""
        screen.query_one("#url", Input).value = "localhost:11434"
        await pilot.press("ctrl+s")
        assert screen.query_one("#url", Input).has_class("-invalid") and answers == []


async def test_a_bad_scenario_file_is_shown_with_its_line(tmp_path, db_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[[steps]]\nname = "a"\nrequests = -3\n')
    app = make_app(db_path, tmp_path / "cfg", backend="ollama", url=refused_url(), model="m")
    answers: list[RunFlags | None] = []
    async with app.run_test(size=(100, 30)) as pilot:
        app.push_screen(LauncherScreen(app.launch_settings), answers.append)
        await wait_for(pilot, on_screen(app, LauncherScreen))
        screen = app.screen
        screen.query_one("#scenario", Select).value = "__file__"
        await pilot.pause()
        file_input = screen.query_one("#scenario-file", Input)
        assert not file_input.disabled
        file_input.value = str(bad)
        await pilot.press("ctrl+s")
        text = str(screen.query_one("#launch-error", Static).render())
        assert f"{bad}:4:" in text and "requests" in text, text
        assert file_input.has_class("-invalid") and answers == []


async def test_start_answers_the_flags_record_would_get(tmp_path, db_path):
    url = refused_url()
    app = make_app(db_path, tmp_path / "cfg", backend="ollama", url=url, model="m", requests=7,
                   seed=3)  # fmt: skip
    answers: list[RunFlags | None] = []
    async with app.run_test(size=(100, 30)) as pilot:
        app.push_screen(LauncherScreen(app.launch_settings), answers.append)
        await wait_for(pilot, on_screen(app, LauncherScreen))
        screen = app.screen
        screen.query_one("#scenario", Select).value = "concurrency"
        screen.query_one("#requests", Input).value = ""  # cleared: the scenario's own count
        screen.query_one("#concurrency", Input).value = "4"
        screen.query_one("#max-tokens", Input).value = "16"
        screen.query_one("#name", Input).value = "four workers"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: answers != [])
    (settings,) = answers
    assert settings is not None
    assert settings.given() == {
        "backend": "ollama", "url": url, "model": "m",
        "scenario": "concurrency", "concurrency": 4, "max_tokens": 16, "name": "four workers",
        "seed": 3,
    }  # fmt: skip
    plan = plan_from_flags(settings)
    assert plan.scenario.name == "concurrency" and plan.name == "four workers"
    assert {s.concurrency for s in plan.scenario.steps} == {4}


async def test_escape_cancels(tmp_path, db_path):
    app = make_app(db_path, tmp_path / "cfg", backend="ollama", url=refused_url())
    answers: list[RunFlags | None] = []
    async with app.run_test(size=(80, 24)) as pilot:
        app.push_screen(LauncherScreen(app.launch_settings), answers.append)
        await wait_for(pilot, on_screen(app, LauncherScreen))
        await pilot.press("escape")
        await wait_for(pilot, lambda: answers == [None])


async def test_an_unreachable_server_fails_the_run_with_a_message(tmp_path, db_path):
    url = refused_url()
    app = make_app(db_path, tmp_path / "cfg", backend="ollama", url=url, model="m", requests=2)
    async with app.run_test(size=(100, 30)) as pilot:
        assert app.start_run(app.launch_settings)
        await wait_for(pilot, lambda: app.session.recording is None, timeout=60)
        assert app.run_status.state == "failed" and app.is_running
        shot = app.export_screenshot()
        assert "failed" in shot
    (run,) = queries.list_runs(open_readonly(db_path))
    assert run.status == "failed" and url in (run.error or ""), run.error


async def test_a_fixed_value_clears_its_error(tmp_path, db_path):
    app = make_app(db_path, tmp_path / "cfg", backend="ollama", url=refused_url(), model="m")
    async with app.run_test(size=(100, 30)) as pilot:
        app.push_screen(LauncherScreen(app.launch_settings))
        await wait_for(pilot, on_screen(app, LauncherScreen))
        screen = app.screen
        temperature = screen.query_one("#temperature", Input)
        temperature.value = "3"
        await pilot.press("ctrl+s")
        error = screen.query_one("#launch-error", Static)
        assert "temperature" in str(error.render()) and temperature.has_class("-invalid")
        temperature.value = "1"
        await wait_for(pilot, lambda: str(error.render()).strip() == "")
        assert not temperature.has_class("-invalid")


async def test_fewer_requests_than_workers_is_noted(tmp_path, db_path):
    """``requests=2`` on ``concurrency``: c4 and c8 never have more than 2 in flight."""
    app = make_app(db_path, tmp_path / "cfg", backend="ollama", url=refused_url(), model="m")
    async with app.run_test(size=(100, 40)) as pilot:
        app.push_screen(LauncherScreen(app.launch_settings))
        await wait_for(pilot, on_screen(app, LauncherScreen))
        screen = app.screen
        warning = screen.query_one("#launch-warning", Static)
        screen.query_one("#scenario", Select).value = "concurrency"
        screen.query_one("#requests", Input).value = "2"
        await wait_for(pilot, lambda: "c4" in str(warning.render()))
        text = str(warning.render())
        assert "never more than 2 in flight" in text and "c8" in text and "c2" not in text
        screen.query_one("#requests", Input).value = "8"
        await wait_for(pilot, lambda: str(warning.render()).strip() == "")
        assert not warning.display


async def test_auto_without_ollama_lists_the_engines_model(tmp_path, db_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", refused_url())
    app = make_app(db_path, tmp_path / "cfg")  # backend auto, no URL
    async with app.run_test(size=(100, 30)) as pilot:
        app.push_screen(LauncherScreen(app.launch_settings))
        await wait_for(pilot, on_screen(app, LauncherScreen))
        models = app.screen.query_one("#models", Select)
        await wait_for(pilot, lambda: models.prompt != "(asking…)")
        assert models.prompt == "(engine: smollm2)"
        assert app.screen.query_one("#url", Input).placeholder == "OLLAMA_HOST"
