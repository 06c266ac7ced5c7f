"""The client checking itself: how late llmtop's own event loop ran, how late open-loop requests
went out, how much CPU it used, and the rule that says when that could have moved the numbers.

Why a rule at all: every timestamp llmtop takes is taken by its event loop, so a loop that wakes
late (too many streams for one process, another program on its core) adds that lateness to TTFT
and ITL. At 256 streams one loop was measured 5 ms late on average (issue 17), which is noise
next to a 2 s TTFT and the whole story next to a 20 ms one: hence a share of the TTFT.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llmtop.core.metrics import percentile

LOOP_LAG_SHARE_LIMIT = 0.05
"""Loop lag p99 above this share of the TTFT p50 could move the numbers."""
LOOP_LAG_FLOOR_MS = 0.5
"""...and above this: a loop that wakes within half a millisecond is the OS scheduling a process,
which no number of workers removes (against a fake server with a 3 ms TTFT, 0.15 ms is 5 %)."""
LOOP_CPU_PCT_LIMIT = 85.0
"""An event loop thread busier than this (% of one core) has no room left for bursts."""
LOOP_IDLE_PCT = 50.0
"""A late loop busy less than this (% of one core) was kept waiting by other programs, not by
its own work: the advice is a core of its own before more workers."""


@dataclass(frozen=True, slots=True)
class ClientCheck:
    """One run's (or one live window's) self-check; ``None`` where it was not measured."""

    loop_lag_ms_p50: float | None = None
    loop_lag_ms_p99: float | None = None
    loop_lag_ms_max: float | None = None
    schedule_lag_ms_p99: float | None = None
    """Open-loop requests: how late they went out against their schedule (sent - scheduled)."""
    cpu_pct: float | None = None
    """llmtop's process (every worker together), % of one core."""
    loop_cpu_pct: float | None = None
    """The busiest event loop thread, % of one core."""
    workers: int = 1
    probes: int = 0
    """Loop-lag samples taken."""

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClientCheck:
        return cls(**{k: v for k, v in d.items() if k in cls.__slots__})


def lag_summary(lags_us: Sequence[int]) -> tuple[float | None, float | None, float | None]:
    """``(p50, p99, max)`` in ms of loop-lag samples in microseconds (core/metrics percentiles)."""
    if not lags_us:
        return None, None, None
    ms = [v / 1000 for v in lags_us]
    return percentile(ms, 50), percentile(ms, 99), max(ms)


def bottleneck(
    check: ClientCheck | None, ttft_ms_p50: float | None, cores: int | None = None
) -> str | None:
    """Why llmtop itself could have moved this run's numbers, with by how much; ``None`` if not.

    The sentence always contains "llmtop itself was the bottleneck" (scripts and tests look for
    it) and suggests ``--workers`` (a number when ``cores`` leaves room for more processes).
    """
    if check is None:
        return None
    why: list[str] = []
    lag = check.loop_lag_ms_p99
    if lag is not None and ttft_ms_p50 is not None and ttft_ms_p50 > 0:
        share = lag / ttft_ms_p50
        if share > LOOP_LAG_SHARE_LIMIT and lag > LOOP_LAG_FLOOR_MS:
            shown = f"{share:.0%}" if share >= 2 * LOOP_LAG_SHARE_LIMIT else f"{share:.1%}"
            why.append(  # (5.4 % shown as "5%" beside "limit 5%" read as a contradiction)
                f"its event loop ran {lag:.3g} ms late (p99), {shown} of the TTFT p50 of "
                f"{ttft_ms_p50:.4g} ms (limit {LOOP_LAG_SHARE_LIMIT:.0%})"
            )
    busy = check.loop_cpu_pct
    if busy is not None and busy > LOOP_CPU_PCT_LIMIT:
        why.append(
            f"its event loop kept {busy:.0f}% of a core busy (limit {LOOP_CPU_PCT_LIMIT:.0f}%)"
        )
    if not why:
        return None
    more = check.workers * 2 if cores is None else min(cores, check.workers * 2)
    if more > check.workers:
        spread = f"spread the streams with --workers {more} (or --workers auto)"
    else:
        spread = f"all {cores} cores have a worker: use --workers auto, fewer streams, or a bigger machine"
    if busy is not None and busy < LOOP_IDLE_PCT:
        # A loop that was late while mostly idle waited for a core: other programs (a server on
        # the same machine, the bundled engine) held them. More workers need cores too.
        fix = (
            f"its loop was busy only {busy:.0f}% of the time, so other programs held the cores: "
            f"give llmtop a core the server does not use (taskset), then {spread}"
        )
    else:
        fix = f"{spread}, and give llmtop cores the server does not use"
    return (
        f"llmtop itself was the bottleneck: {'; '.join(why)}; TTFT and ITL may read high by about "
        f"that much: {fix}"
    )
