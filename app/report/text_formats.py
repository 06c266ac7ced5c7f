"""A report as a Markdown table for a README, and as JSON numbers for scripts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from llmtop.app.report.data import ReportData
from llmtop.app.report.scenario_charts import GOODPUT_TARGET, finding
from llmtop.app.report.tables import column_title, columns, slo_text
from llmtop.core import fmt, metrics
from llmtop.storage.queries import StepSummary


@dataclass(frozen=True, slots=True)
class MdColumn:
    title: str
    get: Callable[[StepSummary], float | int | None]
    show: Callable[[float | int | None], str] = fmt.num


MD_COLUMNS: tuple[MdColumn, ...] = (
    MdColumn("requests", lambda s: s.n),
    MdColumn("errors", lambda s: s.errors),
    MdColumn("TTFT mean ms", lambda s: s.ttft_ms.mean),
    MdColumn("TTFT p95 ms", lambda s: s.ttft_ms.p95),
    MdColumn("TPOT mean ms", lambda s: s.tpot_ms.mean),
    MdColumn("E2E mean ms", lambda s: s.e2e_ms.mean),
    MdColumn("E2E p95 ms", lambda s: s.e2e_ms.p95),
    MdColumn("decode tok/s", lambda s: s.decode_tps.mean),
    MdColumn("req/s", lambda s: s.req_per_s),
    MdColumn("output tok/s", lambda s: s.out_tok_per_s),
)
GOODPUT_COLUMN = MdColumn("goodput", lambda s: s.goodput, fmt.share)


def md_escape(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int = 1) -> str:
    """A GitHub-flavoured table; columns from ``numeric_from`` on are right-aligned."""
    align = [":---" if i < numeric_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(md_escape(h) for h in header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def report_markdown(data: ReportData) -> str:
    """A heading, one line of context and one table row per step (plus the whole run)."""
    s = data.summary
    r = s.run
    cols = list(MD_COLUMNS) + ([GOODPUT_COLUMN] if s.slo.is_set else [])
    heading = f"### llmtop run {r.id}" + (f": {r.name}" if r.name else "")
    context = (
        f"Scenario `{r.scenario or '—'}` · backend {r.backend or '—'} · model `{fmt.model_name(r.model) or '—'}` · "
        f"started {r.started_at[:19].replace('T', ' ')} UTC · status {r.status}"
    )
    if s.slo.is_set:
        context += f" · SLO {slo_text(s.slo)}"
    if s.overall.n == 0:
        return f"{heading}\n\n{md_escape(context)}\n\nNo requests were recorded in this run.\n"
    rows = [[column_title(c)] + [col.show(col.get(c)) for col in cols] for c in columns(s)]
    parts = [
        heading,
        "",
        md_escape(context),
        "",
        md_table(["step"] + [c.title for c in cols], rows),
    ]
    note = finding(data)
    if note:
        parts += ["", note]
    return "\n".join(parts) + "\n"


def report_json(data: ReportData) -> dict[str, Any]:
    """The numbers of the report: the run summary, the breakdown, the histogram, derived values."""
    s = data.summary
    out = s.as_dict()
    b = data.breakdown
    out["breakdown"] = (
        None
        if b is None
        else {
            "dimension": b.dimension,
            "groups": [
                {
                    "label": g.label,
                    "key": g.key,
                    "offered_rate": g.offered_rate,
                    "summary": g.summary.as_dict(),
                }
                for g in b.groups
            ],
        }
    )
    h = data.e2e_histogram
    out["e2e_histogram_ms"] = {"edges": list(h.edges), "counts": list(h.counts), "n": h.n}
    sustainable = None
    if b is not None and b.dimension == "rate":
        sustainable = metrics.sustainable_rate(
            [(g.offered_rate or 0.0, g.summary.goodput) for g in b.groups], GOODPUT_TARGET
        )
    out["derived"] = {
        "prefill_share": metrics.prefill_share(s.overall.ttft_ms.mean, s.overall.e2e_ms.mean),
        "sustainable_rate": sustainable,
        "goodput_target": GOODPUT_TARGET,
        "finding": finding(data),
    }
    return out
