"""What the server says about itself: loaded models and their memory (Ollama ``/api/ps``) and,
for servers with ``/metrics``, its kind and version, running and waiting requests, KV-cache use,
its own generation and prompt tok/s, prefix-cache hits, preemptions and its TTFT/TPOT/queue/
prefill means. Works with no run of ours: a server that other clients drive can be watched."""

from __future__ import annotations

from collections.abc import Callable
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

MEANS: tuple[tuple[str, str], ...] = (
    ("ttft_s", "TTFT ms"), ("tpot_s", "TPOT ms"), ("queue_s", "queue ms"),
    ("prefill_s", "prefill ms"),
)  # fmt: skip
"""The server's own histogram means shown, as (canonical histogram, label)."""


def server_title(s: ServerView) -> str:
    """``llama.cpp b0-unknown``: the kind and the version it told."""
    return f"{s.source} {s.version}" if s.version else s.source


def server_numbers(s: ServerView) -> list[tuple[str, float, Callable[[float], str]]]:
    """The server's own numbers beside the bars: prompt tok/s, cache hits, preemptions, means."""
    rows: list[tuple[str, float, Callable[[float], str]]] = []
    if s.prompt_tps is not None:
        rows.append(("prompt t/s", s.prompt_tps, fmt.num))
    if s.prefix_cache_hit_rate is not None:
        rows.append(("cache hit", s.prefix_cache_hit_rate, fmt.share))
    if s.preemptions:
        rows.append(("preempted", s.preemptions, fmt.count))
    for key, name in MEANS:
        v = s.mean_ms(key)
        if v is not None:
            rows.append((name, v, fmt.num))
    return rows


def server_activity(servers: tuple[ServerView, ...]) -> str:
    """One line of what the server is doing, for the header: ``llama.cpp · 4 running · 157 tok/s``."""
    for s in servers:
        if s.source == "ollama" and not s.models:
            continue
        parts = [server_title(s)]
        if s.source == "ollama":
            parts.append(f"{len(s.models)} loaded")
        if s.running is not None:
            parts.append(f"{fmt.count(s.running)} running")
        if s.waiting:
            parts.append(f"{fmt.count(s.waiting)} waiting")
        if s.generation_tps is not None:
            parts.append(f"{fmt.num(s.generation_tps)} tok/s")
        return " · ".join(parts)
    return ""


STALE_S = 5.0
"""A server sample older than this, while other sources keep sampling, is marked with its age."""


def stale_age_s(t_ns: int, now_ns: int | None) -> float | None:
    """Seconds since a sample taken at ``t_ns`` when that is more than ``STALE_S``, else ``None``."""
    if now_ns is None:
        return None
    age = (now_ns - t_ns) / 1e9
    return age if age > STALE_S else None


def absent_default(
    down: tuple[tuple[str, str], ...], servers: tuple[ServerView, ...], watched: str | None
) -> tuple[tuple[tuple[str, str], ...], str | None]:
    """``(down, note)``: when the address watched is only the default one (no ``--url``, the
    ``auto`` backend) and nothing answers there, one calm line instead of each source's
    complaint. Most fresh machines have no Ollama, and a run then uses the in-repo engine: a
    panel of unreachable endpoints in warning colours would say something is broken."""
    if watched is None or servers or not down or not all(s.startswith("server") for s, _ in down):
        return down, None
    where = watched.split("://", 1)[-1]
    return (), f"no Ollama at {where}: a run launched now (l) uses the in-repo engine"


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
    note: reactive[str | None] = reactive(None)
    """A calm line in place of ``down`` (``absent_default``)."""
    now_ns: reactive[int | None] = reactive(None)
    """The newest event's time (any source): a server sample much older than it is stale."""

    def render(self) -> RenderResult:
        label = self.get_component_rich_style("server-panel--label")
        muted = self.get_component_rich_style("server-panel--muted")
        down_style = self.get_component_rich_style("server-panel--down")
        high = self.get_component_styles("server-panel--bar").color
        low = self.background_colors[1].blend(high, 0.35)
        bar_w = max(0, self.size.width - LABEL_W - VALUE_W - 2)
        parts: list[RenderableType] = []
        if self.note:
            parts.append(Text(self.note, style=muted, overflow="fold"))
        for source, reason in self.down:
            # wrapped, not cut: the reason is what the user needs to read to fix it
            parts.append(Text(f"{source}: {reason}", style=down_style, overflow="fold"))
        for s in self.servers:
            grid = Table.grid(padding=(0, 1))
            grid.add_column(width=LABEL_W, no_wrap=True)
            grid.add_column(width=VALUE_W, justify="right", no_wrap=True)
            grid.add_column(width=bar_w, no_wrap=True)
            age = stale_age_s(s.t_ns, self.now_ns)
            if age is not None:
                parts.append(Text(f"{s.source}: last read {age:.0f} s ago", style=down_style))
            if s.source != "ollama":
                parts.append(Text(server_title(s), style=label, no_wrap=True, overflow="ellipsis"))
            if s.models:
                parts.append(self._models(s, label, muted))
            for name, value, series, top, f in (
                ("running", s.running, s.running_series, None, fmt.count),
                ("waiting", s.waiting, s.waiting_series, None, fmt.count),
                ("KV cache", s.kv_cache_pct, s.kv_cache_series, 100.0, fmt.pct),
                ("gen tok/s", s.generation_tps, s.generation_tps_series, None, fmt.num),
            ):
                if value is None:
                    continue
                grid.add_row(
                    Text(name, style=label), f(value), render_bars(series, bar_w, 1, top, high, low)
                )
            for own, amount, show in server_numbers(s):
                grid.add_row(
                    Text(own, style=label), show(amount), Text("server's own", style=muted)
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
