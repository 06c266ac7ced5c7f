"""A dashboard with fixed data for snapshot tests and screenshots: no timers that matter, no
sampling, every number from hand-made events folded by the real aggregator."""

from __future__ import annotations

import math

from llmtop.app.app import DashboardConfig, LlmtopApp
from llmtop.app.widgets.status_line import RunStatus
from llmtop.core.events import (
    Event,
    GpuSampled,
    RequestFailed,
    RequestFinished,
    RequestStarted,
    ResourcesSampled,
    ServerSampled,
    ServerTimings,
    SourceDown,
    TokenReceived,
)
from llmtop.core.metrics import Slo
from llmtop.recorder.flags import RunFlags

MS = 1_000_000
T0 = 1_000_000_000_000
GIB = 1 << 30


def run_events(n_done: int = 40, n_flight: int = 3) -> list[Event]:
    """A run at concurrency 4: TTFT ~200 ms rising with load, ITL ~20 ms, 64-token answers."""
    evs: list[Event] = []
    for i in range(n_done + n_flight):
        start = T0 + i * 400 * MS
        ttft = 180 + 25 * math.sin(i / 3) + (i % 7) * 4
        itl = 19 + (i % 5) * 0.6
        step = ("short", "medium", "long")[min(2, i * 3 // (n_done + n_flight))]
        evs.append(RequestStarted(1, i + 1, start, step=step, prompt_label=step,
                                  prompt_chars=40 * (1 + i % 3), concurrency=4))  # fmt: skip
        n = 64 if i < n_done else 10 + 7 * (i - n_done)
        times = [start + int((ttft + k * itl) * MS) for k in range(n)]
        evs += [TokenReceived(1, i + 1, k, t) for k, t in enumerate(times)]
        if i < n_done:
            if i == 17:
                evs.append(RequestFailed(1, i + 1, times[9] + MS, "protocol", "stream cut mid-way",
                                         start, times[0], times[9], 10, 10))  # fmt: skip
            else:
                evs.append(RequestFinished(1, i + 1, times[-1] + 2 * MS, start, times[0], times[-1],
                                           n, n, ServerTimings(prompt_tokens=20, output_tokens=n)))  # fmt: skip
    for k in range(120):
        t = T0 + k * 500 * MS
        cpu = 35 + 30 * math.sin(k / 6) ** 2
        evs.append(ResourcesSampled(None, t, cpu, (cpu * 0.8, cpu * 1.2), int(9.3 * GIB + k * 2**22),
                                    24 * GIB, int(1.2 * GIB), 92 + 8 * math.sin(k / 4)))  # fmt: skip
        evs.append(ServerSampled(None, t, "ollama", {
            "ollama:loaded:llama3.2:1b:size": 1.9 * GIB, "ollama:loaded:llama3.2:1b:size_vram": 0.0}))  # fmt: skip
    evs.append(SourceDown(None, T0, "gpu", "NVML: no NVIDIA driver"))
    return evs


def gpu_box_events() -> list[Event]:
    """A minute of samples from a machine with two GPUs (NVML itself is not here to ask)."""
    evs: list[Event] = []
    for k in range(60):
        t = T0 + k * 1000 * MS
        cpu = 12 + 6 * math.sin(k / 5) ** 2
        evs.append(ResourcesSampled(None, t, cpu, tuple(cpu + (i % 4) for i in range(16)),
                                    int(41.5 * GIB), 128 * GIB, int(3.1 * GIB), 4.0))  # fmt: skip
        for g in (0, 1):
            util = (35 + 25 * math.sin(k / 7)) if g == 0 else 0.0
            evs.append(GpuSampled(None, t, g, "NVIDIA H100 80GB HBM3", util, int((21 + g) * GIB),
                                  80 * GIB, 120 + 3 * util, 41 + util / 5))  # fmt: skip
        evs.append(ServerSampled(None, t, "ollama", {
            "ollama:loaded:llama3.1:8b:size": 6.2 * GIB,
            "ollama:loaded:llama3.1:8b:size_vram": 6.2 * GIB}))  # fmt: skip
    return evs


class DemoApp(LlmtopApp):
    """The dashboard mid-run (``mid_run``) or at rest, with fixed data and no live timers."""

    def __init__(
        self, *, mid_run: bool = True, theme: str = "llmtop-dark", config_dir=None, db_path=None
    ) -> None:
        # Port 9 (discard) has no listener here: the launcher's model list fails at once.
        launch = RunFlags(
            **{"backend": "ollama", "url": "http://127.0.0.1:9", "model": "llama3.2:1b"}
        )
        super().__init__(DashboardConfig(db_path=db_path, theme=theme, config_dir=config_dir,
                                         launch=launch, watch=False, follow=False,
                                         tick_s=3600))  # fmt: skip
        self.mid_run = mid_run
        if mid_run:
            self.aggregator.set_slo(Slo(ttft_ms=250, tpot_ms=25))
            for ev in run_events():
                self.aggregator.add(ev)
            self.run_status = RunStatus(backend="ollama", url="http://127.0.0.1:9",
                                        model="llama3.2:1b", state="running", run_id=12,
                                        run_name="demo", scenario="basic", step="long",
                                        step_index=3, step_count=3, elapsed_s=16.4, done=40)  # fmt: skip

        else:  # at rest on a GPU box: the machine, two GPUs and the server, no run yet
            for ev in gpu_box_events():
                self.aggregator.add(ev)

    def on_mount(self) -> None:
        super().on_mount()
        self.tick()
        self.dashboard.status = self.run_status
