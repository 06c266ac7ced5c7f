"""The live dashboard: one screen that spreads the aggregator's snapshot over its widgets."""

from __future__ import annotations

import time
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.reactive import reactive
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer

from llmtop.app.widgets.histogram import Histogram
from llmtop.app.widgets.metric_trend import MetricTrend
from llmtop.app.widgets.percentile_table import PercentileTable
from llmtop.app.widgets.requests_table import RequestsTable
from llmtop.app.widgets.resources_panel import ResourcesPanel
from llmtop.app.widgets.server_panel import ServerPanel, absent_default, server_activity
from llmtop.app.widgets.status_line import RunStatus, StatusLine
from llmtop.core import fmt
from llmtop.live.snapshot import EMPTY_SNAPSHOT, Snapshot

HISTOGRAM_EVERY_S = 0.5
"""One histogram redraws at most every half second, the two taking turns (each once a second):
their shape moves slowly, a redraw costs several ms, and two in one frame would make it slow."""
GPU_SOURCES = ("gpu", "nvml")
SYSTEM_SOURCES = ("system", "psutil")


class DashboardScreen(Screen[None]):
    """Live numbers of the current run and of the machine and server beside it."""

    AUTO_FOCUS = ""  # the requests table takes focus (and shows its cursor) when clicked
    # Textual declares these as instance variables (``ClassVar[...] | None``), so a ClassVar
    # annotation here would not match its base; ruff's RUF012 wants one: Textual's type wins.
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]  # noqa: RUF012
    VERTICAL_BREAKPOINTS = [(0, "-short"), (42, "-tall")]  # noqa: RUF012
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("l", "app.open_launcher", "Launch"),
        Binding("s", "app.stop_run", "Stop"),
        Binding("r", "app.open_runs", "Runs"),
        Binding("c", "app.clear_live", "Clear", show=False),
        Binding("pagedown", "scroll_body(1)", "Scroll", show=False),
        Binding("pageup", "scroll_body(-1)", "Scroll", show=False),
    ]

    snapshot: reactive[Snapshot] = reactive(EMPTY_SNAPSHOT, always_update=False)
    """The aggregator's newest snapshot (set by the app's UI tick)."""
    status: reactive[RunStatus] = reactive(RunStatus)
    """What the status line shows (set by the app)."""
    default_watch: reactive[str | None] = reactive(None)
    """The server address watched only because it is the default (set by the app): where
    nothing answers, the server panel says so calmly (``absent_default``)."""

    def __init__(self) -> None:
        super().__init__()
        self._hist_at = 0.0
        self._hist_timer: Timer | None = None
        self._hist_turn = False

    def compose(self) -> ComposeResult:
        yield StatusLine().data_bind(DashboardScreen.status)
        with VerticalScroll(id="dash-body", can_focus=False):
            with Horizontal(id="dash-top"):
                with Vertical(id="dash-main"):
                    with Horizontal(id="dash-trends"):
                        yield MetricTrend("TTFT", "ms", id="ttft-trend", classes="panel")
                        yield MetricTrend(
                            "decode", "tok/s", formatter=fmt.num, id="tps-trend", classes="panel"
                        )
                    yield PercentileTable(id="percentiles", classes="panel")
                    with Horizontal(id="dash-dists"):
                        yield Histogram("E2E latency", id="e2e-hist", classes="panel")
                        yield Histogram("inter-token latency", id="itl-hist", classes="panel")
                with Vertical(id="dash-side"):
                    yield ResourcesPanel(id="resources", classes="panel")
                    yield ServerPanel(id="server", classes="panel")
            yield RequestsTable(id="requests", classes="panel")
        yield Footer()

    def watch_status(self, status: RunStatus) -> None:
        if self.is_mounted:
            table = self.query_one(RequestsTable)
            if status.state == "starting":
                table.empty_hint = f"the run is starting: {status.waiting or 'a moment'}"
            else:
                table.empty_hint = "no requests yet: press l to launch a run"

    def on_mount(self) -> None:
        self.query_one("#percentiles").border_title = "this run [dim]warm-up excluded[/]"
        self.query_one("#resources").border_title = "resources"
        self.query_one("#server").border_title = "server"
        self.query_one("#requests").border_title = "requests [dim]in flight, then finished[/]"
        self._spread(self.snapshot, force=True)

    def watch_snapshot(self, snap: Snapshot) -> None:
        if self.is_mounted:
            self._spread(snap)

    def _spread(self, snap: Snapshot, *, force: bool = False) -> None:
        """Hand each widget its part; a reactive given an equal value does not redraw."""
        ttft = self.query_one("#ttft-trend", MetricTrend)
        ttft.values, ttft.stats = snap.ttft_series, snap.ttft_window
        tps = self.query_one("#tps-trend", MetricTrend)
        tps.values, tps.stats = snap.tps_series, snap.tps_window
        wait = HISTOGRAM_EVERY_S - (time.monotonic() - self._hist_at)
        if force or not self.query_one("#e2e-hist", Histogram).values:
            self._histograms(both=True)
        elif wait <= 0 and self._hist_timer is None:
            self._histograms()
        elif self._hist_timer is None:  # the newest data gets drawn, even if nothing follows it
            self._hist_timer = self.set_timer(wait, self._histograms)
        self.query_one(PercentileTable).table = snap.table
        down = dict(snap.down)
        res = self.query_one(ResourcesPanel)
        res.resources = snap.resources
        res.gpus = snap.gpus
        res.gpu_down = next((down[s] for s in GPU_SOURCES if s in down), None)
        res.system_down = next((down[s] for s in SYSTEM_SOURCES if s in down), None)
        res.client, res.bottleneck = snap.client, snap.bottleneck
        server = self.query_one(ServerPanel)
        server.servers = snap.servers
        server.now_ns = snap.t_ns
        self.query_one(StatusLine).server = server_activity(snap.servers)
        server.down, server.note = absent_default(
            tuple((s, r) for s, r in snap.down if s not in GPU_SOURCES and s not in SYSTEM_SOURCES),
            snap.servers,
            self.default_watch,
        )
        self.query_one(RequestsTable).rows_data = snap.in_flight + snap.finished

    def _histograms(self, *, both: bool = False) -> None:
        self._hist_timer = None
        self._hist_at = time.monotonic()
        snap = self.snapshot
        self._hist_turn = not self._hist_turn
        if both or self._hist_turn:
            e2e = self.query_one("#e2e-hist", Histogram)
            e2e.values, e2e.stats = snap.e2e_values, snap.table.e2e_ms
        if both or not self._hist_turn:
            itl = self.query_one("#itl-hist", Histogram)
            itl.values, itl.stats = snap.itl_values, snap.itl_window
        if not both and self._pending_hist():
            self._hist_timer = self.set_timer(HISTOGRAM_EVERY_S, self._histograms)

    def _pending_hist(self) -> bool:
        """Whether a histogram still shows older data than the snapshot."""
        snap = self.snapshot
        return (
            self.query_one("#e2e-hist", Histogram).values != snap.e2e_values
            or self.query_one("#itl-hist", Histogram).values != snap.itl_values
        )

    def action_scroll_body(self, pages: int) -> None:
        """Page through the panels on a terminal too small to show them all."""
        body = self.query_one("#dash-body", VerticalScroll)
        body.scroll_to(y=body.scroll_y + pages * body.size.height, animate=False)
