"""Everything one report shows, read from the database in one place (the builders do no I/O)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from llmtop.core.errors import UsageError
from llmtop.storage import queries
from llmtop.storage.db import Database
from llmtop.storage.queries import Histogram, RunSummary, StepSummary

Dimension = Literal["prompt", "temperature", "concurrency", "rate", "time"]
"""What a run's steps vary, and so which chart fits it: latency and TPS by prompt length or by
temperature, throughput and latency by concurrency, goodput by offered rate, or (one steady
load, like ``soak``) resources and throughput over time."""

BUILTIN_DIMENSIONS: dict[str, Dimension] = {
    "basic": "prompt",
    "prompt-length": "prompt",
    "temperature": "temperature",
    "concurrency": "concurrency",
    "soak": "time",
    "rate-sweep": "rate",
}
"""The chart each built-in scenario is made for; other scenarios are judged by their shape."""

_GROUP_COLUMN: dict[Dimension, str] = {
    "prompt": "prompt_label",
    "temperature": "temperature",
    "concurrency": "concurrency",
    "rate": "step",
}

MAX_BINS = 30


def bin_count(n: int, most: int = MAX_BINS) -> int:
    """Histogram bins for n values: about 2 sqrt(n), between 5 and ``most``.

    Thirty bins over fifteen requests draw a comb; a handful draw the shape.
    """
    return max(5, min(most, round(2 * math.sqrt(max(n, 1)))))


@dataclass(frozen=True, slots=True)
class Group:
    """One bar or point of a breakdown: a prompt, a temperature, a worker count, a rate."""

    label: str
    key: Any
    summary: StepSummary
    offered_rate: float | None = None
    """For rate sweeps: the arrival rate the step asked for (req/s)."""


@dataclass(frozen=True, slots=True)
class Breakdown:
    dimension: Dimension
    groups: tuple[Group, ...]


@dataclass(frozen=True, slots=True)
class ReportData:
    """One run: its statistics, the breakdown that fits its scenario, and the chart series."""

    summary: RunSummary
    breakdown: Breakdown | None
    e2e_histogram: Histogram
    ttft_series: tuple[tuple[float, float], ...]
    """(seconds since the run started, TTFT ms) at each request's end."""
    decode_tps_series: tuple[tuple[float, float], ...]
    e2e_series: tuple[tuple[float, float], ...]
    cpu_series: tuple[tuple[float, float], ...]
    mem_series: tuple[tuple[float, float], ...]
    """(seconds, bytes used) of the machine's memory."""


def step_rates(params: dict[str, Any]) -> dict[str, float]:
    """Offered arrival rate (req/s) of each step that has one, from the run's stored plan."""
    out: dict[str, float] = {}
    for step in params.get("steps") or []:
        if isinstance(step, dict) and step.get("rate") is not None and step.get("name"):
            try:
                out[str(step["name"])] = float(step["rate"])
            except (TypeError, ValueError):
                continue
    return out


def pick_dimension(
    scenario: str,
    rates: dict[str, float],
    distinct: dict[str, list[Any]],
    has_samples: bool,
) -> Dimension | None:
    """The breakdown a run calls for: its built-in scenario's, else what varies between requests.

    Args:
        scenario: the run's scenario name.
        rates: offered rate per step (``step_rates``).
        distinct: distinct values of ``prompt_label``, ``concurrency``, ``temperature``.
        has_samples: whether resource samples were recorded (a steady run charts them).
    """
    varies: dict[Dimension, bool] = {
        "rate": len(set(rates.values())) >= 2,
        "concurrency": len(distinct.get("concurrency", [])) >= 2,
        "temperature": len(distinct.get("temperature", [])) >= 2,
        "prompt": len(distinct.get("prompt_label", [])) >= 2,
    }
    builtin = BUILTIN_DIMENSIONS.get(scenario)
    if builtin == "time" and has_samples:
        return "time"
    if builtin is not None and varies.get(builtin):
        return builtin
    order: tuple[Dimension, ...] = ("rate", "concurrency", "temperature", "prompt")
    for dim in order:
        if varies[dim]:
            return dim
    return "time" if has_samples else None


def _label(dimension: Dimension, key: Any, rates: dict[str, float]) -> str:
    """A group's name on a chart: ``2/s`` for a rate step, ``0.7`` for a temperature."""
    if dimension == "rate":
        return f"{rates[key]:g}/s"
    if dimension == "temperature":
        return f"{float(key):g}"
    return str(key)


def load_breakdown(db: Database, summary: RunSummary, has_samples: bool) -> Breakdown | None:
    """The breakdown that fits the run, with one group per prompt/temperature/worker count/rate."""
    run = summary.run
    rates = step_rates(run.params)
    distinct = {
        c: queries.distinct_values(db, run.id, c)
        for c in ("prompt_label", "concurrency", "temperature")
    }
    dimension = pick_dimension(run.scenario, rates, distinct, has_samples)
    if dimension is None:
        return None
    if dimension == "time":
        return Breakdown("time", ())
    column = _GROUP_COLUMN[dimension]
    if dimension == "rate":
        pairs = [(s.step, s) for s in summary.steps if s.step in rates]
    else:
        pairs = queries.group_summaries(db, run.id, column, slo=summary.slo)
        if dimension in ("concurrency", "temperature"):
            pairs.sort(key=lambda kv: float(kv[0]))
    groups = tuple(
        Group(
            label=_label(dimension, key, rates),
            key=key,
            summary=s,
            offered_rate=rates.get(key) if dimension == "rate" else None,
        )
        for key, s in pairs
    )
    if dimension == "rate":
        groups = tuple(sorted(groups, key=lambda g: g.offered_rate or 0.0))
    return Breakdown(dimension, groups)


def resolve_run(db: Database, run: int | None) -> int:
    """The run a command means: the given id, or the last run.

    Raises:
        UsageError: no such run, or no runs at all.
    """
    if run is None:
        last = queries.last_run_id(db)
        if last is None:
            raise UsageError("no runs in this database yet: record one with 'llmtop record'")
        return last
    if queries.get_run(db, run) is None:
        raise UsageError(f"no run with id {run} in this database (see 'llmtop runs')")
    return run


def load_report(db: Database, run_id: int, *, bins: int | None = None) -> ReportData:
    """Read everything a report of ``run_id`` shows.

    Raises:
        UsageError: the run does not exist.
    """
    summary = queries.run_summary(db, run_id)
    if summary is None:
        raise UsageError(f"no run with id {run_id} in this database (see 'llmtop runs')")
    cpu = tuple(queries.time_series(db, run_id, "cpu_pct"))
    e2e = queries.metric_values(db, run_id, "e2e_ms")
    mem = tuple(queries.time_series(db, run_id, "mem_used"))
    return ReportData(
        summary=summary,
        breakdown=load_breakdown(db, summary, has_samples=bool(cpu or mem)),
        e2e_histogram=queries.make_histogram("e2e_ms", e2e, bins or bin_count(len(e2e))),
        ttft_series=tuple(queries.time_series(db, run_id, "ttft_ms")),
        decode_tps_series=tuple(queries.time_series(db, run_id, "decode_tps")),
        e2e_series=tuple(queries.time_series(db, run_id, "e2e_ms")),
        cpu_series=cpu,
        mem_series=mem,
    )
