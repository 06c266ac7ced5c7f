"""The Textual app: themes, the UI tick, and the run the dashboard drives.

Measuring happens outside this event loop (app/live_session.py: the recording's own thread and loop);
the app reads the aggregator's snapshot on a fixed tick and hands it to the dashboard only when
it changed, so drawing never delays a timestamp and an idle dashboard does next to nothing.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.theme import Theme

from llmtop.app.live_session import LiveSession
from llmtop.app.screens.dashboard import DashboardScreen
from llmtop.app.widgets.status_line import STATES, RunStatus
from llmtop.core.errors import LlmtopError, UsageError
from llmtop.live.aggregate import Aggregator
from llmtop.live.snapshot import Snapshot
from llmtop.recorder.flags import RunFlags, plan_from_flags
from llmtop.themes.loader import (
    DEFAULT_THEME,
    STYLESHEET,
    load_themes,
    remember_theme,
    remembered_theme,
)

TICK_S = 0.25
"""The UI reads the aggregator four times a second (and does nothing when nothing changed)."""
THEME_DEFAULTS = {
    "chart-ttft": "$primary",
    "chart-tps": "$success",
    "chart-e2e": "$secondary",
    "chart-itl": "$warning",
}
"""Our extra theme variables, for Textual's own themes that do not set them."""


@dataclass(frozen=True)
class DashboardConfig:
    """How the dashboard was asked to open (the ``llmtop`` command line)."""

    db_path: Path | None = None
    theme: str | None = None
    """``--theme``; ``None``: the one remembered from last time, else the default."""
    config_dir: Path | None = None
    """Settings and user themes; ``None``: ``$LLMTOP_CONFIG_DIR`` or the user config dir."""
    launch: RunFlags = field(default_factory=RunFlags)
    """The launcher's starting values: the backend and run flags given on the command line."""
    start_now: bool = False
    """``--scenario`` was given: start that run as soon as the dashboard is up."""
    tick_s: float = TICK_S
    watch: bool = True
    """Sample the machine and the server between runs (off for snapshot tests)."""
    follow: bool = True
    """Between runs, show a proxy's observed run when one records into the database."""


class LlmtopApp(App[None]):
    """htop for LLM inference."""

    TITLE = "llmtop"
    CSS_PATH = STYLESHEET
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("t", "next_theme", "Theme"),
        Binding("question_mark", "help", "Help", key_display="?"),
    ]

    def __init__(self, config: DashboardConfig | None = None) -> None:
        super().__init__()
        self.config = config or DashboardConfig()
        self.session = LiveSession(
            self.config.db_path, watch=self.config.watch, follow=self.config.follow
        )
        self.launch_settings = self.config.launch
        self.run_status = RunStatus(
            backend=self.launch_settings.backend,
            url=self.launch_settings.url or "",
            model=self.launch_settings.model or "",
        )
        self._snap: Snapshot | None = None
        self._run_started: float | None = None
        self._step_names: list[str] = []
        self._theme_names: list[str] = []
        self._theme_problems: list[str] = []
        self._setup_themes()

    @property
    def aggregator(self) -> Aggregator:
        return self.session.aggregator

    # --- themes ------------------------------------------------------------------------------

    def _setup_themes(self) -> None:
        themes, self._theme_problems = load_themes(self.config.config_dir)
        for theme in themes:
            self.register_theme(theme)
        self._theme_names = [t.name for t in themes]
        wanted = self.config.theme
        if wanted is not None and wanted not in self.available_themes:
            raise UsageError(
                f"unknown theme {wanted!r}; choose one of: {', '.join(self._theme_names)} "
                "(or one of Textual's, such as nord)"
            )
        remembered = remembered_theme(self.config.config_dir)
        if wanted is None and remembered in self.available_themes:
            wanted = remembered
        self.theme = wanted or DEFAULT_THEME

    def get_theme_variable_defaults(self) -> dict[str, str]:
        return {**super().get_theme_variable_defaults(), **THEME_DEFAULTS}

    def _theme_changed(self, theme: Theme) -> None:
        problem = remember_theme(theme.name, self.config.config_dir)
        if problem:
            self.notify(problem, severity="warning")

    def action_next_theme(self) -> None:
        """Cycle through llmtop's themes (the palette's "Theme" command offers all)."""
        names = self._theme_names
        i = names.index(self.theme) if self.theme in names else -1
        self.theme = names[(i + 1) % len(names)]
        self.notify(f"theme: {self.theme}", timeout=2)

    # --- lifecycle ---------------------------------------------------------------------------

    def get_default_screen(self) -> Screen[None]:
        return DashboardScreen()

    @property
    def dashboard(self) -> DashboardScreen:
        screen = self.screen_stack[0]
        assert isinstance(screen, DashboardScreen)
        return screen

    def on_mount(self) -> None:
        self.theme_changed_signal.subscribe(self, self._theme_changed)
        for problem in self._theme_problems:
            self.notify(problem, severity="warning", timeout=10)
        self.dashboard.status = self.run_status
        self.set_interval(self.config.tick_s, self.tick, name="ui-tick")
        if self.config.start_now:
            self.start_run(self.launch_settings)
        else:
            self.session.watch(self.launch_settings.backend, self.launch_settings.url)
        # Everything built so far lives as long as the app: keep it out of the collector's
        # full passes, which otherwise stall the UI for tens of ms at a time.
        gc.freeze()

    def on_unmount(self) -> None:
        self.session.close()

    # --- the tick ----------------------------------------------------------------------------

    def tick(self) -> None:
        """Read the aggregator; hand a new snapshot to the dashboard only when it changed.

        Not once the app is shutting down: the timer runs in a task of its own, so a tick can
        come while the screens' widgets are being removed, and would find them gone."""
        if not self.is_running:
            return
        snap = self.aggregator.snapshot()
        if snap is not self._snap:
            self._snap = snap
            self.dashboard.default_watch = self.session.default_watched
            self.dashboard.snapshot = snap
        if self.session.recording is not None:
            self._follow_run()
        elif self.session.follower is not None:
            self._follow_observed(snap)

    def _follow_run(self) -> None:
        rec = self.session.recording
        assert rec is not None
        p = rec.progress
        steps = self._step_names
        step = steps[p.step_index] if 0 <= p.step_index < len(steps) else None
        elapsed = None if self._run_started is None else time.monotonic() - self._run_started
        state = self.run_status.state
        if state == "starting" and p.run_id is not None:
            state = "running"
        status = replace(
            self.run_status,
            state=state,
            run_id=p.run_id,
            model=p.model or self.run_status.model,
            backend=p.backend or self.run_status.backend,
            url=p.base_url or self.run_status.url,
            step=step or ("warm-up" if p.warmup else ""),
            step_index=p.step_index + 1 if step else None,
            elapsed_s=None if elapsed is None else float(int(elapsed)),
            done=p.done,
            waiting=p.status or (self.run_status.waiting if state == "starting" else ""),
        )
        if not rec.is_alive():
            status = self._run_ended(status)
        self._set_status(status)

    def _follow_observed(self, snap: Snapshot) -> None:
        """The status line of a proxy's run that another process records (recorder/follower.py)."""
        follower = self.session.follower
        assert follower is not None
        run = follower.run
        status = self.run_status
        if run is not None:
            elapsed = None
            if run.t0_ns is not None and time.perf_counter_ns() > run.t0_ns:
                elapsed = float((time.perf_counter_ns() - run.t0_ns) // 1_000_000_000)
            t = snap.table
            self._set_status(
                RunStatus(
                    backend=run.backend, url=run.base_url, model=status.model,
                    state="observing", run_id=run.run_id, run_name=run.name,
                    scenario=f"proxy {run.listen}".strip(), elapsed_s=elapsed,
                    done=t.ok + t.errors + t.cancelled,
                )
            )  # fmt: skip
        elif status.state == "observing" and follower.ended is not None:
            ended, how = follower.ended
            if ended.run_id == status.run_id:
                self._set_status(replace(status, state=how if how in STATES else "finished"))
                self.session.resume_watcher()

    def _run_ended(self, status: RunStatus) -> RunStatus:
        rec = self.session.recording
        assert rec is not None
        self.session.recording = None
        self._run_started = None
        result = rec.result
        if result is None:  # a bug in the recording: say so, keep what was stored
            self.notify(f"the run stopped: {rec.error}", severity="error", timeout=15)
            status = replace(status, state="failed")
        else:
            status = replace(status, state=result.status, run_id=result.run_id)
            if result.error:
                self.notify(result.error, severity="error", timeout=15)
            elif result.stopped_early:
                self.notify(result.stopped_early, severity="warning", timeout=10)
            else:
                self.notify(f"run #{result.run_id} {result.status}: {result.ok:,} ok, "
                            f"{result.errors:,} errors", timeout=5)  # fmt: skip
        # Back to what the user pointed llmtop at: an engine the run started is gone with it.
        self.session.watch(self.launch_settings.backend, self.launch_settings.url)
        return status

    def _set_status(self, status: RunStatus) -> None:
        if status != self.run_status:
            self.run_status = status
            self.dashboard.status = status

    # --- runs --------------------------------------------------------------------------------

    def start_run(self, settings: RunFlags) -> bool:
        """Start a run of ``settings``; ``False`` (with a notification) when it cannot start."""
        if self.session.running:
            self.notify("a run is going: stop it first (s)", severity="warning")
            return False
        try:
            plan = plan_from_flags(settings)
        except LlmtopError as e:
            self.notify(str(e), severity="error", timeout=10)
            return False
        self.launch_settings = settings
        self._step_names = [s.name for s in plan.scenario.steps]
        self.session.start_run(plan)
        self._run_started = time.monotonic()
        self._set_status(
            RunStatus(
                backend=plan.backend, url=plan.url or "", model=plan.model or "",
                state="starting", run_name=plan.name, scenario=plan.scenario.name,
                step_count=len(plan.scenario.steps), elapsed_s=0.0,
                waiting="starting the recording process",
            )
        )  # fmt: skip
        return True

    def action_stop_run(self) -> None:
        if not self.session.running:
            self.notify("no run is going", timeout=2)
            return
        self.session.stop_run()
        self._set_status(replace(self.run_status, state="stopping"))

    def action_open_launcher(self) -> None:
        from llmtop.app.screens.launcher import LauncherScreen

        def launched(settings: RunFlags | None) -> None:
            if settings is not None:
                self.start_run(settings)

        self.push_screen(
            LauncherScreen(self.launch_settings, running=self.session.running), launched
        )

    def action_open_runs(self) -> None:
        from llmtop.app.screens.runs import RunsScreen

        self.push_screen(RunsScreen())

    def action_help(self) -> None:
        from llmtop.app.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_clear_live(self) -> None:
        if self.session.running:
            self.notify("the live view follows the run; clear it after the run", timeout=3)
            return
        self.aggregator.clear_run()

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Launch a run", "Backend, model, scenario and load", self.action_open_launcher)  # fmt: skip
        yield SystemCommand("Stop the run", "Cancel what is in flight; keep what arrived", self.action_stop_run)  # fmt: skip
        yield SystemCommand("Runs", "The runs in the database: open or compare", self.action_open_runs)  # fmt: skip
        yield SystemCommand("Next llmtop theme", "Dark, light, high contrast, yours", self.action_next_theme)  # fmt: skip
        yield SystemCommand("Help", "Keys and what each number means", self.action_help)


def open_dashboard(db_path: str | None, theme: str | None, flags: dict[str, object]) -> None:
    """``llmtop`` with no command: check everything that can be checked, then run the app.

    Bad flags, an unknown theme, a bad scenario file or an unusable database end here as one
    ``UsageError``/``StorageError`` line, before the terminal is taken over.
    """
    import sys

    from llmtop.app.commands.proxy_options import dashboard_proxy_args
    from llmtop.storage.db import open_database, resolve_db_path

    settings = RunFlags.from_options(flags)
    start_now = bool(settings.scenario)
    proxy_args = dashboard_proxy_args(flags)
    if start_now and proxy_args:
        raise UsageError("--proxy watches real clients; it does not start a --scenario run")
    if start_now:
        plan_from_flags(settings)  # refuse bad flags or a bad scenario file now, as `record` does
    path = resolve_db_path(db_path)
    app = LlmtopApp(
        DashboardConfig(db_path=path, theme=theme, launch=settings, start_now=start_now)
    )
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("the dashboard needs a terminal; for runs without one use 'llmtop record'")
    open_database(path).close()  # create or migrate it once; screens then read it read-only
    child = None
    if proxy_args:
        from llmtop.app.proxy_child import ProxyChild

        child = ProxyChild([*proxy_args, "--db", str(path)])
        child.start()  # one line and exit 1 if it cannot (the port is taken...)
    try:
        app.run()
    finally:
        if child is not None:
            child.stop()
    run_id = app.run_status.run_id
    if child is not None and child.run_id is not None:
        print(f"llmtop: proxy on {child.url} stopped; its run #{child.run_id} is kept; "
              f"see 'llmtop report {child.run_id}'")  # fmt: skip
    elif run_id is not None:
        print(f"llmtop: last run #{run_id} {stored_status(path, run_id) or app.run_status.state}; "
              f"see 'llmtop report {run_id}'")  # fmt: skip


def stored_status(db_path: Path, run_id: int) -> str | None:
    """The run's status as the database has it: quitting mid-run closes the run as cancelled
    after the last UI tick, so the status line may still say running."""
    from llmtop.storage import queries
    from llmtop.storage.db import open_readonly

    try:
        db = open_readonly(db_path)
    except LlmtopError:
        return None
    try:
        run = queries.get_run(db, run_id)
        return None if run is None else run.status
    finally:
        db.close()
