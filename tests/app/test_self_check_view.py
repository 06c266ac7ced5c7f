"""The dashboard says when llmtop itself may be moving the numbers (issue 17 item 4): the resources
panel's "llmtop" row and, past the limit, the warning, from the events a recording sends."""

from __future__ import annotations

import io

from rich.console import Console
from support.dashboard import make_app, wait_for

from llmtop.app.widgets.resources_panel import ResourcesPanel
from llmtop.core.events import (
    ClientSampled,
    RequestFinished,
    RequestStarted,
    ResourcesSampled,
    TokenReceived,
)

MS = 1_000_000
WARNING = "llmtop itself was the bottleneck"


def run_events(lag_p99_ms: float) -> list:
    """Three requests of TTFT 10 ms, a machine sample, and one self-check sample."""
    evs: list = []
    for rid in (1, 2, 3):
        t0 = rid * 100 * MS
        evs += [
            RequestStarted(1, rid, t0),
            TokenReceived(1, rid, 0, t0 + 10 * MS),
            RequestFinished(1, rid, t0 + 20 * MS, t0, t0 + 10 * MS, t0 + 10 * MS, 1, 1),
        ]
    evs.append(ResourcesSampled(1, 400 * MS, 20.0, (20.0, 20.0), 1 << 30, 4 << 30))
    evs.append(ClientSampled(1, 450 * MS, 0, 0.2, lag_p99_ms, lag_p99_ms, 30.0, 25.0))
    return evs


def panel_text(panel: ResourcesPanel) -> str:
    console = Console(file=io.StringIO(), width=120, record=True)
    console.print(panel.render())
    return " ".join(console.export_text().split())


async def test_the_resources_panel_shows_llmtop_and_warns_past_the_limit(db_path, tmp_path):
    app = make_app(db_path, tmp_path / "cfg")
    async with app.run_test(size=(140, 44)) as pilot:
        for ev in run_events(lag_p99_ms=0.3):  # 3% of the TTFT: fine
            app.aggregator.add(ev)
        panel = app.screen.query_one(ResourcesPanel)
        await wait_for(pilot, lambda: panel.client is not None)
        assert panel.bottleneck is None
        assert "llmtop lag 0.3000 ms p99 CPU 30.0%" in panel_text(panel)
        assert WARNING not in panel_text(panel)
        app.aggregator.add(ClientSampled(1, 1450 * MS, 0, 0.5, 4.0, 6.0, 30.0, 25.0))
        await wait_for(pilot, lambda: panel.bottleneck is not None)
        text = panel_text(panel)
        assert WARNING in text and "40% of the TTFT p50 of 10 ms" in text and "--workers" in text
