"""What the server says about itself: loaded models and their memory (Ollama ``/api/ps``) and,
for servers with ``/metrics``, running and waiting requests and KV-cache use. Works with no
run of ours: a server that other clients drive can be watched."""

from __future__ import annotations

from typing import ClassVar

from rich.console import Group, RenderableType
from rich.style import Style
from rich.table import Table
from rich.text import Text
from textual.app import RenderResult
from textual.reactive import reactive
from textual.widget import Widget

from llmtop.app.widgets.trend import render_bars
from llmtop.core import fmt
from llmtop.live.snapshot import ServerView

LABEL_W = 10
VALUE_W = 8


class ServerPanel(Widget):
    """Every server source read, newest sample first, or why it cannot be read."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "server-panel--label",
        "server-panel--bar",
        "server-panel--muted",
        "server-panel--down",
    }

    servers: reactive[tuple[ServerView, ...]] = reactive(tuple)
    down: reactive[tuple[tuple[str, str], ...]] = reactive(tuple)
    """``(source, reason)`` of server sources that cannot be read right now."""

    def render(self) -> RenderResult:
        label = self.get_component_rich_style("server-panel--label")
        muted = self.get_component_rich_style("server-panel--muted")
        down_style = self.get_component_rich_style("server-panel--down")
        high = self.get_component_styles("server-panel--bar").color
        low = self.background_colors[1].blend(high, 0.35)
        bar_w = max(0, self.size.width - LABEL_W - VALUE_W - 2)
        parts: list[RenderableType] = []
        for source, reason in self.down:
            # wrapped, not cut: the reason is what the user needs to read to fix it
            parts.append(Text(f"{source}: {reason}", style=down_style, overflow="fold"))
        for s in self.servers:
            grid = Table.grid(padding=(0, 1))
            grid.add_column(width=LABEL_W, no_wrap=True)
            grid.add_column(width=VALUE_W, justify="right", no_wrap=True)
            grid.add_column(width=bar_w, no_wrap=True)
            if s.models:
                parts.append(self._models(s, label, muted))
            for name, value, series, top, f in (
                ("running", s.running, s.running_series, None, fmt.count),
                ("waiting", s.waiting, s.waiting_series, None, fmt.count),
                ("KV cache", s.kv_cache_pct, s.kv_cache_series, 100.0, fmt.pct),
            ):
                if value is None:
                    continue
                grid.add_row(
                    Text(name, style=label), f(value), render_bars(series, bar_w, 1, top, high, low)
                )
            if not s.models and s.running is None and s.waiting is None and s.kv_cache_pct is None:
                grid.add_row(Text(s.source, style=label), "", Text("no models loaded", style=muted))
            parts.append(grid)
        if not parts:
            return Text("no server metrics yet", style=muted)
        return Group(*parts)

    def _models(self, s: ServerView, label: Style, muted: Style) -> Table:
        """Loaded models, each with its memory and where it lies (all in VRAM, part, none)."""
        grid = Table.grid(padding=(0, 1), expand=True)
        grid.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        grid.add_column(justify="right", no_wrap=True)
        grid.add_column(no_wrap=True)
        for m in s.models:
            if m.vram_bytes and m.size_bytes and m.vram_bytes < m.size_bytes:
                where = f"{m.vram_bytes / m.size_bytes:.0%} GPU"
            else:
                where = "GPU" if m.vram_bytes else "CPU"
            grid.add_row(
                Text(m.name, style=label), fmt.size(m.size_bytes), Text(where, style=muted)
            )
        return grid
