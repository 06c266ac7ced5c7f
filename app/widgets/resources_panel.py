"""The machine beside the server: CPU (total and per core), memory, the server process's RSS
and CPU, each GPU (or one quiet line saying why there is none), and llmtop itself while a run
goes: its loop lag and CPU, and a warning when it may be moving the numbers."""

from __future__ import annotations

from typing import ClassVar

from rich.console import Group
from rich.style import Style
from rich.table import Table
from rich.text import Text
from textual.app import RenderResult
from textual.color import Color
from textual.reactive import reactive
from textual.widget import Widget

from llmtop.app.widgets.trend import EIGHTHS, render_bars
from llmtop.core import fmt
from llmtop.core.self_check import ClientCheck
from llmtop.live.snapshot import Gpu, Resources

LABEL_W = 10
VALUE_W = 16


def core_cells(per_core: tuple[float, ...]) -> str:
    """One block per core, its height the core's load (0..100 %)."""
    return "".join(EIGHTHS[max(0, min(8, round(p / 100 * 8)))] or " " for p in per_core)


class ResourcesPanel(Widget):
    """Resources with a trend per line; ``None`` fields (not measured) print as a dash."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "resources-panel--label",
        "resources-panel--bar",
        "resources-panel--muted",
        "resources-panel--warning",
    }

    resources: reactive[Resources | None] = reactive(None)
    """The newest system sample and its series; ``None`` before the first."""
    gpus: reactive[tuple[Gpu, ...]] = reactive(tuple)
    gpu_down: reactive[str | None] = reactive(None)
    """Why no GPU can be read (no NVIDIA driver, ...); shown when there are no GPUs."""
    system_down: reactive[str | None] = reactive(None)
    client: reactive[ClientCheck | None] = reactive(None)
    """llmtop's own loop lag and CPU over the last seconds of a run; ``None`` between runs."""
    bottleneck: reactive[str | None] = reactive(None)
    """Why llmtop itself may be moving the numbers now (core/self_check.py), or ``None``."""

    def _shape(self) -> tuple[object, ...]:
        """What decides how many lines the panel needs (a new sample usually changes none)."""
        r = self.resources
        server_known = r is not None and (
            r.server_rss_bytes is not None
            or r.server_cpu_pct is not None
            or bool(r.server_rss_series)
        )
        return (r is None, server_known, len(self.gpus), self.client is None, self.bottleneck)

    def _changed(self) -> None:
        # Re-layout the screen only when the height changes: a layout pass redraws every panel.
        shape = self._shape()
        self.refresh(layout=shape != getattr(self, "_last_shape", None))
        self._last_shape = shape

    def watch_resources(self) -> None:
        self._changed()

    def watch_gpus(self) -> None:
        self._changed()

    def watch_client(self) -> None:
        self._changed()

    def watch_bottleneck(self) -> None:
        self._changed()

    def render(self) -> RenderResult:
        label = self.get_component_rich_style("resources-panel--label")
        muted = self.get_component_rich_style("resources-panel--muted")
        bar_style = self.get_component_styles("resources-panel--bar")
        high = bar_style.color
        low = self.background_colors[1].blend(high, 0.35)
        bar_w = max(0, self.size.width - LABEL_W - VALUE_W - 2)
        grid = Table.grid(padding=(0, 1))
        grid.add_column(width=LABEL_W, no_wrap=True)
        grid.add_column(width=VALUE_W, justify="right", no_wrap=True)
        grid.add_column(width=bar_w, no_wrap=True)

        def row(name: str, value: str, series: tuple[float, ...] = (), top: float | None = None):
            bars = render_bars(series, bar_w, 1, top, high, low) if series else Text("")
            grid.add_row(Text(name, style=label), value, bars)

        r = self.resources
        if r is None:
            text = self.system_down or "waiting for the first sample"
            return Text(text, style=muted)
        cores = len(r.per_core) or 1
        row("CPU", fmt.pct(r.cpu_pct), r.cpu_series, 100.0)
        grid.add_row(
            Text(f"{cores} cores", style=label),
            "",
            Text(core_cells(r.per_core), style=Style(color=high.rich_color)),
        )
        row(
            "memory",
            fmt.size_pair(r.mem_used_bytes, r.mem_total_bytes),
            r.mem_series,
            float(r.mem_total_bytes),
        )
        if r.server_rss_bytes is None and r.server_cpu_pct is None and not r.server_rss_series:
            grid.add_row(Text("server", style=label), "", Text("process not found", style=muted))
        else:
            row(
                "server RSS",
                fmt.size(r.server_rss_bytes),
                r.server_rss_series,
                float(r.mem_total_bytes),
            )
            scpu_top = max(100.0 * cores, *r.server_cpu_series) if r.server_cpu_series else None
            row("server CPU", fmt.pct(r.server_cpu_pct), r.server_cpu_series, scpu_top)
        c = self.client
        if c is not None:
            lag = f"{fmt.num(c.loop_lag_ms_p99)} ms p99" if c.loop_lag_ms_p99 is not None else ""
            grid.add_row(  # the event loop's lag (p99) and the CPU of llmtop's processes
                Text("llmtop lag", style=label),
                lag,
                Text(f"CPU {fmt.pct(c.cpu_pct)}", style=muted, overflow="ellipsis"),
            )
        parts: list[Table | Text] = [grid]
        if self.bottleneck:
            warn = self.get_component_rich_style("resources-panel--warning")
            parts.append(Text(self.bottleneck, style=warn, overflow="fold"))
        if self.gpus:
            for g in self.gpus:
                parts.append(self._gpu(g, high, low, bar_w, label, muted))
        else:
            reason = self.gpu_down or "no GPU found"
            parts.append(Text(f"no GPU · {reason}", style=muted, overflow="fold"))
        return Group(*parts)

    def _gpu(self, g: Gpu, high: Color, low: Color, bar_w: int, label, muted) -> Table:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(width=LABEL_W, no_wrap=True)
        grid.add_column(width=VALUE_W, justify="right", no_wrap=True)
        grid.add_column(width=bar_w, no_wrap=True)
        extra = " · ".join(
            v
            for v in (
                None if g.power_w is None else f"{g.power_w:.0f} W",
                None if g.temp_c is None else f"{g.temp_c:.0f}°C",
            )
            if v
        )
        name = f"GPU {g.gpu}"
        grid.add_row(Text(name, style=label), Text(extra, style=muted), Text(g.name, style=muted))
        grid.add_row(
            Text("  util", style=label),
            fmt.pct(g.util_pct),
            render_bars(g.util_series, bar_w, 1, 100.0, high, low),
        )
        grid.add_row(
            Text("  memory", style=label),
            fmt.size_pair(g.mem_used_bytes, g.mem_total_bytes),
            render_bars(
                g.mem_series,
                bar_w,
                1,
                None if g.mem_total_bytes is None else float(g.mem_total_bytes),
                high,
                low,
            ),
        )
        return grid
