"""What ``llmtop record`` shows at the end: the summary (the live bars are record_progress.py).

The summary is built from the database (storage.queries.run_summary), so it shows exactly what
was stored.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from llmtop.core import fmt
from llmtop.recorder.recording import RecordResult
from llmtop.storage.queries import RunSummary, StepSummary

GIB = 1 << 30


def _gib(v: int | None) -> str:
    return "—" if v is None else f"{v / GIB:,.2f}"


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v * 100:.0f}%"


def _rows(summary: RunSummary) -> list[tuple[str, Any]]:
    """(label, cell function of a step) for each row shown; rows with no data are dropped."""
    has = lambda f: any(f(s) is not None for s in (summary.overall, *summary.steps))  # noqa: E731
    rows: list[tuple[str, Any]] = [
        ("requests", lambda s: str(s.n)),
        (
            "errors",
            lambda s: str(s.errors) + (f" (+{s.cancelled} cancelled)" if s.cancelled else ""),
        ),
        ("TTFT mean ms", lambda s: fmt.num(s.ttft_ms.mean)),
        ("TTFT p50 ms", lambda s: fmt.num(s.ttft_ms.p50)),
        ("TTFT p95 ms", lambda s: fmt.num(s.ttft_ms.p95)),
        ("TTFT p99 ms", lambda s: fmt.num(s.ttft_ms.p99)),
        ("TPOT mean ms", lambda s: fmt.num(s.tpot_ms.mean)),
        ("ITL p50 ms", lambda s: fmt.num(s.itl_ms.p50)),
        ("decode tok/s", lambda s: fmt.num(s.decode_tps.mean)),
        ("E2E mean ms", lambda s: fmt.num(s.e2e_ms.mean)),
        ("E2E p95 ms", lambda s: fmt.num(s.e2e_ms.p95)),
        ("req/s", lambda s: fmt.num(s.req_per_s)),
        ("output tok/s", lambda s: fmt.num(s.out_tok_per_s)),
    ]
    optional: list[tuple[str, Any, Any]] = [
        ("server decode tok/s", lambda s: fmt.num(s.server_tps.mean), lambda s: s.server_tps.mean),
        (
            "goodput",
            lambda s: _pct(s.goodput),
            lambda s: s.goodput if summary.slo.is_set else None,
        ),
        ("CPU avg %", lambda s: fmt.num(s.cpu_pct_mean), lambda s: s.cpu_pct_mean),
        ("memory peak GiB", lambda s: _gib(s.mem_used_peak), lambda s: s.mem_used_peak),
        ("server RSS peak GiB", lambda s: _gib(s.server_rss_peak), lambda s: s.server_rss_peak),
        (
            "server CPU avg %",
            lambda s: fmt.num(s.server_cpu_pct_mean),
            lambda s: s.server_cpu_pct_mean,
        ),
        ("GPU util avg %", lambda s: fmt.num(s.gpu_util_mean), lambda s: s.gpu_util_mean),
        ("GPU memory peak GiB", lambda s: _gib(s.gpu_mem_peak), lambda s: s.gpu_mem_peak),
    ]
    rows += [(label, cell) for label, cell, value in optional if has(value)]
    return rows


def summary_table(summary: RunSummary) -> Table:
    """Metrics down, steps across (and ``all`` when there are several steps)."""
    columns: list[StepSummary] = list(summary.steps)
    if len(columns) != 1:
        columns.append(summary.overall)
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("")
    for s in columns:
        table.add_column(Text(s.step or "all"), justify="right")  # a name, not markup
    for label, cell in _rows(summary):
        table.add_row(label, *(cell(s) for s in columns))
    return table


def summary_title(summary: RunSummary, result: RecordResult) -> Text:
    r = summary.run
    duration = summary.overall.duration_s
    parts = [
        f"run {r.id}",
        r.scenario or "custom",
        f"{r.backend} {r.base_url}",
        fmt.model_name(r.model),
        r.status + (f" in {duration:.1f} s" if duration else ""),
    ]
    return Text(" · ".join(p for p in parts if p), style="bold")


def notes(
    summary: RunSummary, result: RecordResult, examples: dict[str, str] | None = None
) -> list[str]:
    """Lines under the table: warm-up, SLOs, early stop, error kinds with an example each."""
    out = []
    o = summary.overall
    if o.warmup:
        out.append(f"warm-up: {o.warmup} request(s) recorded and left out of the statistics")
    slo = summary.slo
    if slo.is_set:
        parts = [
            f"{name} <= {v:g} ms"
            for name, v in (("TTFT", slo.ttft_ms), ("TPOT", slo.tpot_ms), ("E2E", slo.e2e_ms))
            if v is not None
        ]
        out.append(f"SLOs: {' and '.join(parts)}; goodput = share of requests meeting them")
    if result.stopped_early:
        out.append(result.stopped_early)
    for kind, n in sorted(o.error_kinds.items()):
        example = (examples or {}).get(kind)
        out.append(f"errors: {n} {kind}" + (f", e.g. {example}" if example else ""))
    return out


def print_summary(
    console: Console, summary: RunSummary, result: RecordResult, examples: dict[str, str]
) -> None:
    console.print(summary_title(summary, result))
    console.print(summary_table(summary))
    for line in notes(summary, result, examples):
        console.print(Text(line, style="dim"))


def summary_json(summary: RunSummary | None, result: RecordResult) -> dict[str, Any]:
    """What ``record --json`` prints: the run in the shape ``runs --json`` and ``report --json``
    share (``RunSummary.as_dict``), and ``recording``: how this command's run ended."""
    out: dict[str, Any] = (
        summary.as_dict()
        if summary is not None
        else {"run": {"id": result.run_id, "status": result.status, "error": result.error}}
    )
    out["recording"] = {
        "status": result.status,
        "error": result.error,
        "failure": result.failure,
        "stopped_early": result.stopped_early,
        "db": str(result.db_path),
    }
    return out
