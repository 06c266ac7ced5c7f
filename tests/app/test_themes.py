"""Themes: the built-in files, a user's own, a broken one, --theme, the key, the palette, and the
choice remembered between sessions."""

from __future__ import annotations

import json

import pytest
from support.cli import assert_one_line_error, run_llmtop
from support.dashboard import make_app, wait_for

from llmtop.app.app import DashboardConfig, LlmtopApp
from llmtop.core.errors import UsageError
from llmtop.themes.loader import (
    DEFAULT_THEME,
    load_themes,
    remember_theme,
    remembered_theme,
    theme_from_file,
)

BUILTIN = {"llmtop-dark", "llmtop-light", "llmtop-high-contrast"}


def test_builtin_themes_load_and_differ(tmp_path):
    themes, problems = load_themes(tmp_path)
    by_name = {t.name: t for t in themes}
    assert set(by_name) == BUILTIN and problems == []
    assert by_name["llmtop-light"].dark is False and by_name["llmtop-dark"].dark is True
    assert len({t.background for t in themes}) == 3
    for t in themes:  # every theme sets the chart colours the stylesheet uses
        assert {"chart-ttft", "chart-tps", "chart-e2e", "chart-itl"} <= set(t.variables)


def test_user_themes_come_from_the_config_dir(tmp_path):
    user = tmp_path / "themes"
    user.mkdir()
    (user / "solar.toml").write_text('primary = "#268bd2"\nbackground = "#002b36"\n')
    (user / "broken.toml").write_text('primary = "#268bd2"\nshadow = "yes"\n')
    (user / "badcolour.toml").write_text('name = "bad"\nprimary = "not a colour"\n')
    themes, problems = load_themes(tmp_path)
    names = [t.name for t in themes]
    assert "solar" in names and "broken" not in names and "bad" not in names
    assert len(problems) == 2
    assert any("unknown key 'shadow'" in p and "broken.toml" in p for p in problems)
    assert any("badcolour.toml" in p for p in problems)


def test_a_theme_file_without_primary_is_refused(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text('background = "#000000"\n')
    with pytest.raises(UsageError, match="'primary'"):
        theme_from_file(path)


def test_choice_is_remembered_and_other_settings_kept(tmp_path):
    assert remembered_theme(tmp_path) is None
    (tmp_path / "settings.json").write_text(json.dumps({"other": 1}))
    assert remember_theme("llmtop-light", tmp_path) is None
    assert remembered_theme(tmp_path) == "llmtop-light"
    assert json.loads((tmp_path / "settings.json").read_text()) == {
        "other": 1,
        "theme": "llmtop-light",
    }


def test_unknown_theme_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match=r"unknown theme 'nope'.*llmtop-dark"):
        LlmtopApp(DashboardConfig(theme="nope", config_dir=tmp_path, watch=False))


def test_unknown_theme_on_the_command_line_is_one_line(tmp_path):
    proc = run_llmtop("--theme", "nope", "--db", str(tmp_path / "x.db"),
                      env={"LLMTOP_CONFIG_DIR": str(tmp_path)})  # fmt: skip
    assert_one_line_error(proc, 2, "unknown theme 'nope'", "llmtop-light")


def test_without_a_terminal_the_dashboard_says_what_to_use(tmp_path):
    proc = run_llmtop("--db", str(tmp_path / "x.db"), env={"LLMTOP_CONFIG_DIR": str(tmp_path)})
    assert_one_line_error(proc, 2, "needs a terminal", "llmtop record")


def test_a_bad_scenario_is_refused_before_the_dashboard_opens(tmp_path):
    proc = run_llmtop("--db", str(tmp_path / "x.db"), "--scenario", "nope",
                      env={"LLMTOP_CONFIG_DIR": str(tmp_path)})  # fmt: skip
    assert_one_line_error(proc, 2, "unknown scenario 'nope'")


async def test_key_palette_and_next_session(tmp_path, db_path):
    cfg = tmp_path / "cfg"
    app = make_app(db_path, cfg)
    async with app.run_test(size=(100, 30)) as pilot:
        assert app.theme == DEFAULT_THEME
        await pilot.press("t")
        assert app.theme == "llmtop-light"
        # the command palette's own Theme command lists ours
        assert set(app.available_themes) >= BUILTIN
        await pilot.press("ctrl+p")
        await pilot.press(*"next llmtop theme", "enter")
        await wait_for(pilot, lambda: app.theme == "llmtop-high-contrast")
    assert remembered_theme(cfg) == "llmtop-high-contrast"
    again = make_app(db_path, cfg)  # the next session starts where this one ended
    assert again.theme == "llmtop-high-contrast"
    forced = LlmtopApp(DashboardConfig(theme="llmtop-dark", config_dir=cfg, watch=False))
    assert forced.theme == "llmtop-dark"  # --theme wins over the remembered one
