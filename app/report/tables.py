"""The run header and the summary table: metrics down, steps across (the learner's log, filled in).

Metrics run down the side so a run of three to eight steps fits an 80-column terminal and reads
like the table people paste into their notes. A row whose every cell is unmeasured is left out
(no TPOT for one-token answers, no server tok/s from OpenAI-style servers, no GPU rows without
a GPU). Values over an SLO are red.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rich import box
from rich.console import Group as RichGroup
from rich.console import RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from llmtop.app.report.data import step_rates
from llmtop.core import fmt, metrics
from llmtop.core.metrics import Slo
from llmtop.core.self_check import ClientCheck
from llmtop.storage.queries import RunSummary, StepSummary

Getter = Callable[[StepSummary], float | int | None]


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the summary table: what it shows and how to read it from a step."""

    section: str
    label: str
    get: Getter
    show: Callable[[float | int | None], str] = fmt.num
    slo: str | None = None
    """The SLO field (``ttft_ms``, ``tpot_ms``, ``e2e_ms``) a value is judged against."""


def _tokens(value: float | int | None) -> str:
    return fmt.DASH if value is None else f"{value:,.1f}"


def _rate(value: float | int | None) -> str:
    return fmt.DASH if value is None else f"{value:g}"


def _out_per_request(s: StepSummary) -> float | None:
    return s.output_tokens / s.ok if s.ok else None


def _prefill(s: StepSummary) -> float | None:
    return metrics.prefill_share(s.ttft_ms.mean, s.e2e_ms.mean)


def _server(name: str) -> Getter:
    """A getter of one of the server's own numbers (``ServerMetrics.<name>``)."""

    def get(s: StepSummary) -> float | int | None:
        m = s.server_metrics
        return None if m is None else getattr(m, name)

    return get


SERVER_SECTION = "Server's own"
"""The rows read from the server's /metrics: counter increases over the step, histogram means."""


ROWS: tuple[Row, ...] = (
    Row("Requests", "ok", lambda s: s.ok),
    Row("Requests", "errors", lambda s: s.errors),
    Row("Requests", "cancelled", lambda s: s.cancelled or None),
    Row("Requests", "prompt tokens (mean)", lambda s: s.prompt_tokens_mean, _tokens),
    Row("Requests", "output tokens / request", _out_per_request, _tokens),
    Row("Requests", "duration", lambda s: s.duration_s, fmt.seconds),
    Row("TTFT ms", "mean", lambda s: s.ttft_ms.mean, slo="ttft_ms"),
    Row("TTFT ms", "p50", lambda s: s.ttft_ms.p50, slo="ttft_ms"),
    Row("TTFT ms", "p95", lambda s: s.ttft_ms.p95, slo="ttft_ms"),
    Row("TTFT ms", "p99", lambda s: s.ttft_ms.p99, slo="ttft_ms"),
    Row("TPOT ms", "mean", lambda s: s.tpot_ms.mean, slo="tpot_ms"),
    Row("TPOT ms", "p50", lambda s: s.tpot_ms.p50, slo="tpot_ms"),
    Row("TPOT ms", "p95", lambda s: s.tpot_ms.p95, slo="tpot_ms"),
    Row("ITL ms", "p50", lambda s: s.itl_ms.p50),
    Row("ITL ms", "p95", lambda s: s.itl_ms.p95),
    Row("ITL ms", "p99", lambda s: s.itl_ms.p99),
    Row("E2E latency ms", "mean", lambda s: s.e2e_ms.mean, slo="e2e_ms"),
    Row("E2E latency ms", "p50", lambda s: s.e2e_ms.p50, slo="e2e_ms"),
    Row("E2E latency ms", "p95", lambda s: s.e2e_ms.p95, slo="e2e_ms"),
    Row("E2E latency ms", "p99", lambda s: s.e2e_ms.p99, slo="e2e_ms"),
    Row("E2E latency ms", "prefill share", _prefill, fmt.share),
    Row("Throughput", "decode tok/s (mean)", lambda s: s.decode_tps.mean),
    Row("Throughput", "decode tok/s (p50)", lambda s: s.decode_tps.p50),
    Row("Throughput", "server tok/s (mean)", lambda s: s.server_tps.mean),
    Row("Throughput", "requests/s", lambda s: s.req_per_s),
    Row("Throughput", "output tok/s", lambda s: s.out_tok_per_s),
    Row("Throughput", "error rate", lambda s: s.error_rate, fmt.share),
    Row("Throughput", "goodput", lambda s: s.goodput, fmt.share),
    Row("Resources", "CPU % (mean)", lambda s: s.cpu_pct_mean),
    Row("Resources", "memory used (peak)", lambda s: s.mem_used_peak, fmt.size),
    Row("Resources", "server RSS (peak)", lambda s: s.server_rss_peak, fmt.size),
    Row("Resources", "server CPU % (mean)", lambda s: s.server_cpu_pct_mean),
    Row("Resources", "GPU util % (mean)", lambda s: s.gpu_util_mean),
    Row("Resources", "GPU memory (peak)", lambda s: s.gpu_mem_peak, fmt.size),
    Row(SERVER_SECTION, "output tokens", _server("generation_tokens"), fmt.count),
    Row(SERVER_SECTION, "prompt tokens", _server("prompt_tokens"), fmt.count),
    Row(SERVER_SECTION, "cached prompt tokens", _server("cached_prompt_tokens"), fmt.count),
    Row(SERVER_SECTION, "prefix-cache hits", _server("prefix_cache_hit_rate"), fmt.share),
    Row(SERVER_SECTION, "output tok/s", _server("generation_tps")),
    Row(SERVER_SECTION, "preemptions", _server("preemptions"), fmt.count),
    Row(SERVER_SECTION, "TTFT ms (mean)", _server("ttft_ms_mean")),
    Row(SERVER_SECTION, "TPOT ms (mean)", _server("tpot_ms_mean")),
    Row(SERVER_SECTION, "queue ms (mean)", _server("queue_ms_mean")),
    Row(SERVER_SECTION, "prefill ms (mean)", _server("prefill_ms_mean")),
    Row(SERVER_SECTION, "E2E ms (mean)", _server("e2e_ms_mean")),
    Row(SERVER_SECTION, "running (max)", _server("running_max"), fmt.count),
    Row(SERVER_SECTION, "waiting (max)", _server("waiting_max"), fmt.count),
    Row(SERVER_SECTION, "KV cache (max)", _server("kv_cache_usage_max"), fmt.share),
)


def columns(summary: RunSummary) -> list[StepSummary]:
    """The table's columns: each step, then the whole run when there is more than one step."""
    steps = list(summary.steps)
    if len(steps) == 1 and steps[0].n == summary.overall.n:
        return steps
    return [*steps, summary.overall] if steps else [summary.overall]


def column_title(s: StepSummary) -> str:
    return s.step or "all"


def visible_rows(summary: RunSummary) -> list[Row]:
    """Rows with at least one measured value; goodput only when the run had SLOs."""
    cols = columns(summary)
    rows = []
    for row in ROWS:
        if row.label == "goodput" and not summary.slo.is_set:
            continue
        if any(row.get(c) is not None for c in cols):
            rows.append(row)
    return rows


def over_slo(slo: Slo, field: str | None, value: float | int | None) -> bool:
    limit = getattr(slo, field) if field else None
    return limit is not None and value is not None and value > limit


def table_rows(summary: RunSummary) -> list[Row]:
    """The rows the summary shows (terminal, HTML, image): measured ones, the offered rate."""
    rows = visible_rows(summary)
    rates = step_rates(summary.run.params)
    if any(c.step in rates for c in columns(summary)):
        offered = Row("Throughput", "offered req/s", lambda s: rates.get(s.step), _rate)
        at = next(i for i, r in enumerate(rows) if r.section == "Throughput")
        rows.insert(at, offered)
    return rows


def summary_table(summary: RunSummary) -> Table:
    """Metrics down, steps across; the last column is the whole run when there are steps."""
    cols = columns(summary)
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, expand=False)
    table.add_column("", style="bold", no_wrap=True)
    table.add_column("", style="dim", no_wrap=True)
    for c in cols:
        table.add_column(
            column_title(c),
            justify="right",
            no_wrap=True,
            style="bold" if c is summary.overall and len(cols) > 1 else None,
        )
    section = None
    for row in table_rows(summary):
        if row.section != section and section is not None:
            table.add_section()
        cells: list[Text | str] = []
        for c in cols:
            value = row.get(c)
            text = row.show(value)
            cells.append(Text(text, style="red") if over_slo(summary.slo, row.slo, value) else text)
        table.add_row(row.section if row.section != section else "", row.label, *cells)
        section = row.section
    return table


def slo_text(slo: Slo) -> str:
    parts = [
        f"{name} ≤ {v:g} ms"
        for name, v in (("TTFT", slo.ttft_ms), ("TPOT", slo.tpot_ms), ("E2E", slo.e2e_ms))
        if v is not None
    ]
    return ", ".join(parts) if parts else "none"


def _facts(*pairs: tuple[str, str | Text]) -> Text:
    """``key value · key value`` with dim keys; empty values are left out."""
    out = Text()
    for key, value in pairs:
        if not value:
            continue
        if out:
            out.append("  ·  ", style="dim")
        if key:
            out.append(f"{key} ", style="dim")
        out.append(value)
    return out


def header(summary: RunSummary, headline: str | None = None) -> Panel:
    """Who, what and when of the run, and the numbers a reader looks for first."""
    r, o = summary.run, summary.overall
    status_style = {"finished": "green", "running": "yellow"}.get(r.status, "red")
    title = Text.assemble(("llmtop report", "bold"), "  run ", (str(r.id), "bold cyan"))
    if r.name:
        title.append(f"  {r.name}", style="italic")
    failed = ""
    if o.errors:
        kinds = ", ".join(f"{k} {v}" for k, v in o.error_kinds.items())
        failed = f"{o.errors} failed ({kinds})"
    lines = [
        _facts(
            ("scenario", Text(r.scenario or "—", "bold")),
            ("model", Text(fmt.model_name(r.model) or "—", "bold")),
            ("on", r.backend or "—"),
            ("at", r.base_url),
            ("server", server_name(o)),
        ),
        _facts(
            ("started", r.started_at[:19].replace("T", " ") + " UTC"),
            ("took", fmt.seconds(o.duration_s)),
            ("", Text(r.status, status_style)),
            ("requests", str(o.n)),
            ("", Text(failed, "red")),
            ("warm-up", str(o.warmup) if o.warmup else ""),
            ("SLO", slo_text(summary.slo) if summary.slo.is_set else ""),
        ),
    ]
    if r.error:
        lines.append(Text(f"error: {r.error}", style="red"))
    c = summary.client
    if c is not None:
        lines.append(client_facts(c))
        if summary.bottleneck:
            lines.append(Text(summary.bottleneck, style="yellow"))
    if headline:
        lines.append(Text(headline, style="bold"))
    return Panel(RichGroup(*lines), title=title, title_align="left", box=box.ROUNDED)


def client_facts(c: ClientCheck) -> Text:
    """llmtop's own lag and CPU during the run, one line (core/self_check.py)."""
    lag = ""
    if c.loop_lag_ms_p99 is not None:
        lag = f"p50 {fmt.num(c.loop_lag_ms_p50)} ms, p99 {fmt.num(c.loop_lag_ms_p99)} ms"
    facts = _facts(
        ("loop lag", lag),
        ("schedule lag p99", "" if c.schedule_lag_ms_p99 is None else f"{fmt.num(c.schedule_lag_ms_p99)} ms"),
        ("CPU", fmt.pct(c.cpu_pct) if c.cpu_pct is not None else ""),
        ("workers", str(c.workers) if c.workers > 1 else ""),
    )  # fmt: skip
    return Text.assemble(("llmtop itself  ", "dim"), facts) if facts else facts


def server_name(s: StepSummary) -> str:
    """``llama.cpp b0-unknown``: the server's kind and version, from its own metrics."""
    m = s.server_metrics
    if m is None:
        return ""
    return f"{m.kind} {m.version}" if m.version else m.kind


def key_numbers(o: StepSummary) -> str | None:
    """One sentence with the numbers people copy into their notes first."""
    if o.ok == 0:
        return None
    parts = [f"E2E mean {fmt.num(o.e2e_ms.mean)} ms, p95 {fmt.num(o.e2e_ms.p95)} ms"]
    if o.e2e_ms.mean and o.e2e_ms.p95:
        parts[-1] += f" ({o.e2e_ms.p95 / o.e2e_ms.mean:.2f}× mean)"
    if o.ttft_ms.mean is not None:
        parts.append(f"TTFT mean {fmt.num(o.ttft_ms.mean)} ms")
    share = metrics.prefill_share(o.ttft_ms.mean, o.e2e_ms.mean)
    if share is not None:
        parts.append(f"prefill {fmt.share(share)} of latency")
    if o.decode_tps.mean is not None:
        parts.append(f"{fmt.num(o.decode_tps.mean)} decode tok/s")
    if o.req_per_s is not None:
        parts.append(f"{fmt.num(o.req_per_s)} req/s")
    return " · ".join(parts)


def render_header_and_table(summary: RunSummary, headline: str | None) -> list[RenderableType]:
    return [header(summary, headline), summary_table(summary)]
