"""A comparison as a rich table, a Markdown table and JSON (pure: takes a ``Comparison``)."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from llmtop.app.report.compare import SERVER_GROUP, Change, Comparison, Row
from llmtop.app.report.text_formats import md_table
from llmtop.core import fmt

LABEL_ONLY_GROUPS = ("Throughput", "Resources", SERVER_GROUP)
"""Groups whose rows are named by their label alone."""
VERDICT_STYLE = {
    "better": "bold green",
    "worse": "bold red",
    "noise": "dim",
    "changed": "yellow",
    "n/a": "dim",
}
VERDICT_WORD = {
    "better": "✓ better",
    "worse": "✗ worse",
    "noise": "≈ same",
    "changed": "changed",
    "n/a": "",
}
UNSURE_WORD = "? not significant"
"""A change the requests' own spread could explain (the interval of the difference spans zero):
said so, never "within noise" beside a figure of -92.6 %."""


def change_text(row: Row, change: Change | None) -> str:
    """``+101.2% ✗ worse``; shares change in points: ``+12.0 pp ✓ better``."""
    if change is None or change.delta is None:
        return ""
    if row.spec.share is not None:
        amount = f"{change.delta * 100:+.1f} pp"
    elif change.relative is not None:
        amount = fmt.signed_share(change.relative)
    else:
        amount = f"{change.delta:+g}"
    word = VERDICT_WORD[change.verdict]
    if change.verdict == "noise" and change.reason == "interval contains zero":
        word = UNSURE_WORD
    return f"{amount} {word}".strip()


def run_title(c: Comparison, i: int) -> str:
    r = c.runs[i]
    return f"run {r.id}" + (" (base)" if i == 0 else "")


def row_name(row: Row) -> str:
    """``TTFT ms p50``; throughput and resource rows are named by their label alone."""
    if row.spec.group in LABEL_ONLY_GROUPS:
        return row.spec.label
    return f"{row.spec.group} {row.spec.label}"


def _names(rows: list[Row]) -> str:
    """Metric names grouped: ``TTFT ms mean/p95, requests/s``."""
    groups: dict[str, list[str]] = {}
    for row in rows:
        key = "" if row.spec.group in LABEL_ONLY_GROUPS else row.spec.group
        groups.setdefault(key, []).append(row.spec.label)
    return ", ".join(
        f"{g} {'/'.join(labels)}" if g else ", ".join(labels) for g, labels in groups.items()
    )


def summary_lines(c: Comparison) -> list[str]:
    """Per compared run: how many metrics got worse (named), better (named), or stayed."""
    lines = []
    for i in range(1, len(c.runs)):
        by: dict[str, list[Row]] = {"worse": [], "better": [], "noise": [], "changed": []}
        unsure = 0
        for row in c.rows:
            ch = row.changes[i]
            if ch is not None and ch.verdict in by:
                by[ch.verdict].append(row)
                unsure += ch.verdict == "noise" and ch.reason == "interval contains zero"
        parts = []
        for verdict in ("worse", "better"):
            if by[verdict]:
                parts.append(f"{len(by[verdict])} {verdict}: {_names(by[verdict])}")
            else:
                parts.append(f"0 {verdict}")
        same = len(by["noise"]) - unsure
        parts.append(f"{same} the same (under {c.threshold:.0%})")
        parts.append(f"{unsure} not significant")
        lines.append(f"run {c.runs[i].id} vs run {c.runs[0].id}: " + "; ".join(parts))
    return lines


def runs_table(c: Comparison) -> Table:
    """Which run is which."""
    t = Table(box=None, header_style="bold", pad_edge=False)
    for col in (
        "run", "name", "scenario", "backend", "server", "model", "started", "status", "requests",
    ):  # fmt: skip
        t.add_column(col, justify="right" if col in ("run", "requests") else "left")
    for i, r in enumerate(c.runs):
        t.add_row(
            run_title(c, i),
            r.name,
            r.scenario,
            r.backend,
            c.servers[i] if i < len(c.servers) else "",
            fmt.model_name(r.model),
            r.started_at[:19].replace("T", " "),
            r.status,
            str(r.n_requests),
        )
    return t


def comparison_table(c: Comparison) -> Table:
    """Metrics down; for each run its value, and for each later run the change and verdict."""
    t = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False)
    t.add_column("", style="bold", no_wrap=True)
    t.add_column("", style="dim", no_wrap=True)
    for i in range(len(c.runs)):
        t.add_column(run_title(c, i), justify="right", no_wrap=True)
        if i > 0:
            t.add_column("change", justify="left", no_wrap=True)
    group = None
    for row in c.rows:
        if group is not None and row.spec.group != group:
            t.add_section()
        cells: list[RenderableType] = [
            row.spec.group if row.spec.group != group else "",
            row.spec.label,
        ]
        for i, (value, ch) in enumerate(zip(row.values, row.changes, strict=True)):
            cells.append(row.spec.show(value))
            if i > 0:
                style = VERDICT_STYLE[ch.verdict] if ch else ""
                cells.append(Text(change_text(row, ch), style=style))
        t.add_row(*cells)
        group = row.spec.group
    return t


def comparison_renderables(comparisons: list[Comparison]) -> list[RenderableType]:
    first = comparisons[0]
    items: list[RenderableType] = [runs_table(first)]
    items += [Text("note: " + n, style="yellow") for n in first.notes]
    for c in comparisons:
        what = f"step {c.step}" if c.step else "whole runs"
        items.append(
            Text(
                f"{what}: change against run {c.runs[0].id}; 'not significant' = the "
                f"{c.confidence:.0%} bootstrap interval of the difference spans zero (the "
                f"requests' own spread could explain it); 'same' = under {c.threshold:.0%}",
                style="dim",
            )
        )
        if not c.rows:
            items.append(Text("nothing to compare: no run has a successful request", style="red"))
            continue
        items.append(comparison_table(c))
        items += [Text(line, style="bold") for line in summary_lines(c)]
    return [Group(*items)]


def comparison_markdown(comparisons: list[Comparison]) -> str:
    """One Markdown table per comparison: metric, each run's value, each change."""
    parts = []
    for c in comparisons:
        header = ["metric"]
        for i in range(len(c.runs)):
            header.append(run_title(c, i))
            if i > 0:
                header.append(f"change (run {c.runs[i].id})")
        rows = []
        for row in c.rows:
            cells = [row_name(row)]
            for i, (v, ch) in enumerate(zip(row.values, row.changes, strict=True)):
                cells.append(row.spec.show(v))
                if i > 0:
                    cells.append(change_text(row, ch))
            rows.append(cells)
        title = f"step `{c.step}`" if c.step else "whole runs"
        lines = "\n\n".join(summary_lines(c))
        parts.append(f"#### llmtop compare, {title}\n\n{md_table(header, rows)}\n\n{lines}")
    return "\n\n".join(parts) + "\n"


def _change_json(ch: Change | None) -> dict[str, Any] | None:
    if ch is None:
        return None
    return {
        "delta": ch.delta,
        "relative": ch.relative,
        "interval": list(ch.interval) if ch.interval else None,
        "verdict": ch.verdict,
        "reason": ch.reason,
    }


def comparison_json(comparisons: list[Comparison]) -> dict[str, Any]:
    first = comparisons[0]
    return {
        "baseline": first.runs[0].id,
        "runs": [
            {
                "id": r.id,
                "name": r.name,
                "scenario": r.scenario,
                "backend": r.backend,
                "server": first.servers[i] if i < len(first.servers) else None,
                "model": r.model,
                "started_at": r.started_at,
                "status": r.status,
            }
            for i, r in enumerate(first.runs)
        ],
        "threshold": first.threshold,
        "confidence": first.confidence,
        "notes": list(first.notes),
        "comparisons": [
            {
                "step": c.step,
                "rows": [
                    {
                        "metric": row.spec.key,
                        "label": row_name(row),
                        "better": row.spec.better,
                        "values": list(row.values),
                        "changes": [_change_json(ch) for ch in row.changes],
                    }
                    for row in c.rows
                ],
            }
            for c in comparisons
        ],
    }
