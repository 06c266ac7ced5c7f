"""Read-only questions asked of the database, answered as frozen dataclasses.

The statistics themselves come from core/metrics.py: these functions only select the rows
(measured requests, excluding warm-up) and hand the values over.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlite_utils import Database

from llmtop.core import metrics
from llmtop.core.metrics import EMPTY_STATS, Slo, Stats
from llmtop.core.self_check import ClientCheck, bottleneck
from llmtop.core.server_series import canonical_values, normal_kind

REQUEST_METRICS: tuple[str, ...] = (
    "ttft_ms", "e2e_ms", "tpot_ms", "decode_tps", "overall_tps", "server_tps", "server_ttft_ms",
)  # fmt: skip
SAMPLE_METRICS: tuple[str, ...] = ("cpu_pct", "mem_used", "server_rss", "server_cpu_pct")


@dataclass(frozen=True, slots=True)
class RunRow:
    """One run as listed in history."""

    id: int
    name: str
    started_at: str
    ended_at: str | None
    status: str
    scenario: str
    backend: str
    base_url: str
    model: str
    params: dict[str, Any]
    host: dict[str, Any]
    llmtop_version: str
    t0_ns: int | None
    error: str | None
    n_requests: int = 0
    n_errors: int = 0
    kind: str = "recorded"
    """``recorded`` (llmtop sent the requests) or ``observed`` (a proxy timed real clients')."""
    client: dict[str, Any] | None = None
    """llmtop's own self-check, stored at the end of the run (core/self_check.ClientCheck)."""


@dataclass(frozen=True, slots=True)
class ServerMetrics:
    """What the server's own ``/metrics`` said about a step: counter increases between the
    samples that bracket it, histogram means (ms), and its gauges while the step ran."""

    kind: str
    version: str | None
    generation_tokens: float | None
    prompt_tokens: float | None
    """Cached ones included, on every kind (llama.cpp's two counters added)."""
    cached_prompt_tokens: float | None
    prefix_cache_hit_rate: float | None
    """0..1."""
    preemptions: float | None
    requests_finished: float | None
    generation_tps: float | None
    """Generated tokens over the step's duration (the client's first start to last end)."""
    prompt_tps: float | None
    ttft_ms_mean: float | None
    tpot_ms_mean: float | None
    itl_ms_mean: float | None
    e2e_ms_mean: float | None
    queue_ms_mean: float | None
    prefill_ms_mean: float | None
    decode_ms_mean: float | None
    running_mean: float | None
    running_max: float | None
    waiting_max: float | None
    kv_cache_usage_max: float | None
    """0..1."""
    bracketed: bool
    """Both bracketing samples were read outside the step (a scrape before its first request
    and one begun after its last ended): the increases are the step's own."""

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class StepSummary:
    """Statistics of one step of a run (or of the whole run, as ``step=''``), warm-up excluded."""

    step: str
    n: int
    ok: int
    errors: int
    cancelled: int
    warmup: int
    ttft_ms: Stats
    e2e_ms: Stats
    tpot_ms: Stats
    itl_ms: Stats
    decode_tps: Stats
    server_tps: Stats
    output_tokens: int
    prompt_tokens_mean: float | None
    req_per_s: float | None
    out_tok_per_s: float | None
    error_rate: float | None
    goodput: float | None
    duration_s: float | None
    concurrency: int | None
    temperature: float | None
    cpu_pct_mean: float | None
    mem_used_peak: int | None
    server_rss_peak: int | None
    server_cpu_pct_mean: float | None
    gpu_util_mean: float | None
    gpu_mem_peak: int | None
    error_kinds: dict[str, int] = field(default_factory=dict)
    server_metrics: ServerMetrics | None = None
    """The server's own numbers over the step (``None``: it exposes no ``/metrics``)."""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            out[name] = value.as_dict() if isinstance(value, Stats | ServerMetrics) else value
        return out


@dataclass(frozen=True, slots=True)
class RunSummary:
    run: RunRow
    overall: StepSummary
    steps: tuple[StepSummary, ...]
    slo: Slo
    client: ClientCheck | None = None
    """How llmtop itself did (loop lag, schedule lag, CPU); ``None`` for runs before it was kept."""

    @property
    def bottleneck(self) -> str | None:
        """Why llmtop itself could have moved the numbers, or ``None`` (core/self_check.py)."""
        cores = self.run.host.get("cpus_allowed") or self.run.host.get("cores_logical")
        return bottleneck(self.client, self.overall.ttft_ms.p50, cores)

    def as_dict(self) -> dict[str, Any]:
        """The one JSON shape of a run, printed by ``runs --json``, ``record --json`` and
        ``report --json`` (which add their own keys beside these four)."""
        r = self.run
        return {
            "run": {
                "id": r.id,
                "name": r.name,
                "started_at": r.started_at,
                "ended_at": r.ended_at,
                "status": r.status,
                "kind": r.kind,
                "scenario": r.scenario,
                "backend": r.backend,
                "base_url": r.base_url,
                "model": r.model,
                "error": r.error,
                "requests": r.n_requests,
                "errors": r.n_errors,
            },
            "slo": {
                "ttft_ms": self.slo.ttft_ms,
                "tpot_ms": self.slo.tpot_ms,
                "e2e_ms": self.slo.e2e_ms,
            },
            "overall": self.overall.as_dict(),
            "steps": [s.as_dict() for s in self.steps],
            "client": None
            if self.client is None
            else {**self.client.as_dict(), "bottleneck": self.bottleneck},
        }


@dataclass(frozen=True, slots=True)
class Histogram:
    """Counts of values in bins; ``edges`` has one more entry than ``counts``."""

    metric: str
    edges: tuple[float, ...]
    counts: tuple[int, ...]
    n: int


# --- runs --------------------------------------------------------------------------------------


def _run_row(row: dict[str, Any]) -> RunRow:
    return RunRow(
        id=row["id"],
        name=row["name"] or "",
        started_at=row["started_at"] or "",
        ended_at=row["ended_at"],
        status=row["status"],
        scenario=row["scenario"] or "",
        backend=row["backend"] or "",
        base_url=row["base_url"] or "",
        model=row["model"] or "",
        params=json.loads(row["params_json"] or "{}"),
        host=json.loads(row["host_json"] or "{}"),
        llmtop_version=row["llmtop_version"] or "",
        t0_ns=row["t0_ns"],
        error=row["error"],
        n_requests=row.get("n_requests") or 0,
        n_errors=row.get("n_errors") or 0,
        kind=row.get("kind") or "recorded",
        client=json.loads(row["client_json"]) if row.get("client_json") else None,
    )


_RUNS_SQL = """
select runs.*,
  (select count(*) from requests r where r.run_id = runs.id and r.warmup = 0) as n_requests,
  (select count(*) from requests r where r.run_id = runs.id and r.warmup = 0
     and r.status = 'error') as n_errors
from runs
"""


def list_runs(
    db: Database,
    *,
    model: str | None = None,
    backend: str | None = None,
    scenario: str | None = None,
    since: str | None = None,
    limit: int | None = None,
) -> list[RunRow]:
    """Runs, newest first, filtered by exact model/backend/scenario and ISO start time."""
    where: list[str] = []
    args: list[object] = []
    for col, value in (("model", model), ("backend", backend), ("scenario", scenario)):
        if value is not None:
            where.append(f"{col} = ?")
            args.append(value)
    if since is not None:
        where.append("started_at >= ?")
        args.append(since)
    sql = _RUNS_SQL + (" where " + " and ".join(where) if where else "") + " order by id desc"
    if limit is not None:
        sql += " limit ?"
        args.append(limit)
    return [_run_row(r) for r in db.query(sql, args)]


def get_run(db: Database, run_id: int) -> RunRow | None:
    rows = list(db.query(_RUNS_SQL + " where runs.id = ?", [run_id]))
    return _run_row(rows[0]) if rows else None


def last_run_id(db: Database) -> int | None:
    rows = list(db.query("select max(id) as id from runs"))
    return rows[0]["id"] if rows else None


def run_slo(run: RunRow) -> Slo:
    """The SLOs a run was recorded with (``params.slo``), or none."""
    slo = run.params.get("slo") or {}
    return Slo(ttft_ms=slo.get("ttft_ms"), tpot_ms=slo.get("tpot_ms"), e2e_ms=slo.get("e2e_ms"))


# --- summaries ---------------------------------------------------------------------------------


def _requests(db: Database, run_id: int) -> list[dict[str, Any]]:
    return list(db.query("select * from requests where run_id = ? order by id", [run_id]))


def request_rows(db: Database, run_id: int) -> list[dict[str, Any]]:
    """Every request row of a run, in id order (what a replay sends again)."""
    return _requests(db, run_id)


def itl_by_request(
    db: Database, run_id: int, request_ids: Iterable[int] | None = None
) -> dict[int, list[float]]:
    """ITL samples (ms) of each request, with the server's token count spread over its chunks."""
    totals = {
        r["id"]: r["output_tokens"]
        for r in db.query("select id, output_tokens from requests where run_id = ?", [run_id])
    }
    wanted = None if request_ids is None else set(request_ids)
    times: dict[int, list[int]] = defaultdict(list)
    counts: dict[int, list[int]] = defaultdict(list)
    for req_id, t_ns, n in db.execute(
        "select request_id, t_ns, n_tokens from tokens where run_id = ? order by request_id, idx",
        [run_id],
    ).fetchall():
        if wanted is None or req_id in wanted:
            times[req_id].append(t_ns)
            counts[req_id].append(n)
    return {
        req_id: metrics.itl_ms(times[req_id], counts[req_id], totals.get(req_id))
        for req_id in times
    }


_RESOURCE_FIELDS = (
    "cpu_pct_mean", "mem_used_peak", "server_rss_peak", "server_cpu_pct_mean", "gpu_util_mean",
    "gpu_mem_peak",
)  # fmt: skip


def _window_resources(
    db: Database, run_id: int, t_from: int | None, t_to: int | None
) -> dict[str, Any]:
    if t_from is None or t_to is None:
        return dict.fromkeys(_RESOURCE_FIELDS)
    s = next(
        db.query(
            "select avg(cpu_pct) cpu, max(mem_used) mem, max(server_rss) rss, "
            "avg(server_cpu_pct) scpu from samples where run_id = ? and t_ns between ? and ?",
            [run_id, t_from, t_to],
        )
    )
    g = next(
        db.query(
            "select avg(util_pct) util, max(mem_used) mem from gpu_samples "
            "where run_id = ? and t_ns between ? and ?",
            [run_id, t_from, t_to],
        )
    )
    return {
        "cpu_pct_mean": s["cpu"],
        "mem_used_peak": s["mem"],
        "server_rss_peak": s["rss"],
        "server_cpu_pct_mean": s["scpu"],
        "gpu_util_mean": g["util"],
        "gpu_mem_peak": g["mem"],
    }


def _metrics_source(db: Database, run_id: int) -> str | None:
    """The run's ``/metrics`` source (its server kind), the one with the most samples."""
    rows = list(
        db.query(
            "select source, count(*) n from server_samples where run_id = ? and key = 'scrape_ms'"
            " group by source order by n desc limit 1",
            [run_id],
        )
    )
    if not rows:  # recorded before samples carried scrape_ms
        rows = list(
            db.query(
                "select source, count(*) n from server_samples where run_id = ? "
                "and source != 'ollama' group by source order by n desc limit 1",
                [run_id],
            )
        )
    return rows[0]["source"] if rows else None


def server_identity(db: Database, run_id: int) -> tuple[str, str | None] | None:
    """``(kind, version)`` of the server a run measured, as its sampler identified it."""
    if db["servers"].exists():
        rows = list(
            db.query(
                "select kind, version from servers where run_id = ? and kind != 'ollama' "
                "order by t_ns desc limit 1",
                [run_id],
            )
        )
        if not rows:
            rows = list(
                db.query(
                    "select kind, version from servers where run_id = ? order by t_ns desc limit 1",
                    [run_id],
                )
            )
        if rows:
            return normal_kind(rows[0]["kind"]), rows[0]["version"]
    source = _metrics_source(db, run_id)
    return (normal_kind(source), None) if source else None


def _sample_at(db: Database, run_id: int, source: str, t_ns: int) -> dict[str, float]:
    return {
        r["key"]: r["value"]
        for r in db.query(
            "select key, value from server_samples where run_id = ? and source = ? and t_ns = ?",
            [run_id, source, t_ns],
        )
    }


def server_metrics(
    db: Database, run_id: int, t_from: int | None, t_to: int | None, until: int | None = None
) -> ServerMetrics | None:
    """The server's own numbers over a stretch of a run: from the newest sample read before
    the first request started (``t_from``) to the newest one read before ``until`` (the next
    step's first request; ``None``: the run's end). A sample was read between
    ``t_ns - scrape_ms`` and ``t_ns``; the increases are the stretch's own when the end sample
    was begun after the last request ended (``t_to``), as the recording's boundary scrapes are.
    """
    if t_from is None or t_to is None:
        return None
    source = _metrics_source(db, run_id)
    if source is None:
        return None
    before = next(
        db.query(
            "select max(t_ns) t from server_samples where run_id = ? and source = ? and t_ns <= ?",
            [run_id, source, t_from],
        )
    )["t"]
    sql = "select max(t_ns) t from server_samples where run_id = ? and source = ?"
    args: list[Any] = [run_id, source]
    if until is not None:
        sql += " and t_ns < ?"
        args.append(until)
    after = next(db.query(sql, args))["t"]
    began = None
    if after is not None:
        began = next(
            db.query(
                "select value from server_samples where run_id = ? and source = ? and t_ns = ? "
                "and key = 'scrape_ms'",
                [run_id, source, after],
            ),
            None,
        )
    bracketed = (
        before is not None
        and after is not None
        and began is not None
        and after - began["value"] * metrics.NS_PER_MS >= t_to
    )
    if before is None:  # no sample before the step: the first one inside it
        before = next(
            db.query(
                "select min(t_ns) t from server_samples where run_id = ? and source = ? "
                "and t_ns >= ?",
                [run_id, source, t_from],
            )
        )["t"]
    if before is None or after is None or after <= before:
        return None
    kind = normal_kind(source)
    first = canonical_values(_sample_at(db, run_id, source, before), kind)
    last = canonical_values(_sample_at(db, run_id, source, after), kind)
    during_rows: dict[int, dict[str, float]] = defaultdict(dict)
    for r in db.query(
        "select t_ns, key, value from server_samples where run_id = ? and source = ? "
        "and t_ns > ? and t_ns < ?",
        [run_id, source, before, after],
    ):
        during_rows[r["t_ns"]][r["key"]] = r["value"]
    during = [canonical_values(v, kind) for _, v in sorted(during_rows.items())]
    w = metrics.server_window(first, last, (t_to - t_from) / metrics.NS_PER_S, during)
    ident = server_identity(db, run_id)
    version = ident[1] if ident and ident[0] == kind else None
    means = w.means_ms
    return ServerMetrics(
        kind=kind,
        version=version,
        generation_tokens=w.generation_tokens,
        prompt_tokens=w.prompt_tokens,
        cached_prompt_tokens=w.cached_prompt_tokens,
        prefix_cache_hit_rate=w.prefix_cache_hit_rate,
        preemptions=w.preemptions,
        requests_finished=w.requests_finished,
        generation_tps=w.generation_tps,
        prompt_tps=w.prompt_tps,
        ttft_ms_mean=means.get("ttft_s"),
        tpot_ms_mean=means.get("tpot_s"),
        itl_ms_mean=means.get("itl_s"),
        e2e_ms_mean=means.get("e2e_s"),
        queue_ms_mean=means.get("queue_s"),
        prefill_ms_mean=means.get("prefill_s"),
        decode_ms_mean=means.get("decode_s"),
        running_mean=w.running_mean,
        running_max=w.running_max,
        waiting_max=w.waiting_max,
        kv_cache_usage_max=w.kv_cache_usage_max,
        bracketed=bracketed,
    )


def summarize_requests(
    db: Database,
    run_id: int,
    step: str,
    rows: Sequence[dict[str, Any]],
    slo: Slo,
    itl: dict[int, list[float]],
    *,
    with_server: bool = False,
    server_until: int | None = None,
) -> StepSummary:
    """The statistics of a set of request rows (one step, or all of a run).

    ``with_server``: add the server's own numbers over the rows' window (only for sets that
    hold a stretch of time alone: a step, a whole run; not groups whose requests interleave),
    read up to ``server_until`` (the next step's first request; ``None``: the run's end).
    """
    measured = [r for r in rows if not r["warmup"]]
    ok = [r for r in measured if r["status"] == "ok"]
    errors = [r for r in measured if r["status"] == "error"]
    cancelled = [r for r in measured if r["status"] == "cancelled"]
    finished = [r for r in measured if r["status"] != "running"]
    starts = [r["t_start_ns"] for r in finished if r["t_start_ns"] is not None]
    ends = [r["t_end_ns"] for r in finished if r["t_end_ns"] is not None]
    t_from = min(starts) if starts else None
    t_to = max(ends) if ends else None
    out_tokens = sum(r["output_tokens"] or 0 for r in ok)
    kinds: dict[str, int] = defaultdict(int)
    for r in errors:
        kinds[r["error_kind"] or "unknown"] += 1
    prompt_tokens = [r["prompt_tokens"] for r in ok if r["prompt_tokens"] is not None]
    concurrencies = {r["concurrency"] for r in measured if r["concurrency"] is not None}
    temps = {r["temperature"] for r in measured if r["temperature"] is not None}
    judged = [r for r in measured if r["status"] in ("ok", "error")]
    duration = None if t_from is None or t_to is None else (t_to - t_from) / metrics.NS_PER_S
    return StepSummary(
        step=step,
        n=len(measured),
        ok=len(ok),
        errors=len(errors),
        cancelled=len(cancelled),
        warmup=len(rows) - len(measured),
        ttft_ms=metrics.summarize(r["ttft_ms"] for r in ok),
        e2e_ms=metrics.summarize(r["e2e_ms"] for r in ok),
        tpot_ms=metrics.summarize(r["tpot_ms"] for r in ok),
        itl_ms=metrics.summarize(v for r in ok for v in itl.get(r["id"], ()))
        if itl
        else EMPTY_STATS,
        decode_tps=metrics.summarize(r["decode_tps"] for r in ok),
        server_tps=metrics.summarize(r["server_tps"] for r in ok),
        output_tokens=out_tokens,
        prompt_tokens_mean=sum(prompt_tokens) / len(prompt_tokens) if prompt_tokens else None,
        req_per_s=metrics.rate_per_s(len(ok), t_from, t_to),
        out_tok_per_s=metrics.rate_per_s(out_tokens, t_from, t_to),
        error_rate=len(errors) / len(judged) if judged else None,
        goodput=metrics.goodput(
            slo, ((r["status"] == "ok", r["ttft_ms"], r["tpot_ms"], r["e2e_ms"]) for r in judged)
        ),
        duration_s=duration,
        concurrency=concurrencies.pop() if len(concurrencies) == 1 else None,
        temperature=temps.pop() if len(temps) == 1 else None,
        error_kinds=dict(kinds),
        server_metrics=server_metrics(db, run_id, t_from, t_to, server_until)
        if with_server
        else None,
        **_window_resources(db, run_id, t_from, t_to),
    )


def run_summary(
    db: Database, run_id: int, *, slo: Slo | None = None, with_itl: bool = True
) -> RunSummary | None:
    """Per-step and overall statistics of one run; ``None`` when the run does not exist."""
    run = get_run(db, run_id)
    if run is None:
        return None
    slo = slo if slo is not None else run_slo(run)
    rows = _requests(db, run_id)
    itl = itl_by_request(db, run_id) if with_itl else {}
    steps: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        steps.setdefault(r["step"] or "", []).append(r)
    firsts = [
        min(
            (r["t_start_ns"] for r in rs if r["t_start_ns"] is not None and not r["warmup"]),
            default=None,
        )
        for rs in steps.values()
    ]
    return RunSummary(
        run=run,
        overall=summarize_requests(db, run_id, "", rows, slo, itl, with_server=True),
        steps=tuple(
            summarize_requests(
                db,
                run_id,
                name,
                rs,
                slo,
                itl,
                with_server=True,
                server_until=firsts[i + 1] if i + 1 < len(firsts) else None,
            )
            for i, (name, rs) in enumerate(steps.items())
        ),
        slo=slo,
        client=client_check(run, rows),
    )


def client_check(run: RunRow, rows: Sequence[dict[str, Any]]) -> ClientCheck | None:
    """The run's stored self-check with the schedule lag of its open-loop requests (sent minus
    scheduled, warm-up excluded); ``None`` for a run recorded before llmtop kept one."""
    lags = [
        metrics.schedule_lag_ms(r["t_scheduled_ns"], r["t_start_ns"])
        for r in rows
        if not r["warmup"] and r.get("t_scheduled_ns") is not None and r["t_start_ns"] is not None
    ]
    if run.client is None and not lags:
        return None
    check = ClientCheck.from_dict(run.client or {})
    return dataclasses.replace(check, schedule_lag_ms_p99=metrics.percentile(lags, 99))


# --- charts ------------------------------------------------------------------------------------


def itl_groups(
    db: Database, run_id: int, *, step: str | None = None, ids: list[int] | None = None
) -> list[list[float]]:
    """ITL samples (ms) of the run's measured, successful requests, one list per request (the
    unit a comparison resamples: gaps of one request move together)."""
    if ids is None:
        ids = [
            r["id"]
            for r in db.query(
                "select id from requests where run_id = ? and warmup = 0 and status = 'ok'"
                + (" and step = ?" if step is not None else ""),
                [run_id, step] if step is not None else [run_id],
            )
        ]
    return [vs for vs in itl_by_request(db, run_id, ids).values() if vs]


def metric_values(
    db: Database, run_id: int, metric: str, *, step: str | None = None
) -> list[float]:
    """Values of one per-request metric (or ``itl_ms``) over the run's measured, successful requests."""
    if metric == "itl_ms":
        return [v for vs in itl_groups(db, run_id, step=step) for v in vs]
    if metric not in REQUEST_METRICS:
        raise ValueError(f"unknown metric {metric!r}")
    sql = f"select {metric} v from requests where run_id = ? and warmup = 0 and status = 'ok' and {metric} is not null"
    args: list[Any] = [run_id]
    if step is not None:
        sql += " and step = ?"
        args.append(step)
    return [r["v"] for r in db.query(sql, args)]


def histogram(
    db: Database,
    run_id: int,
    metric: str,
    *,
    bins: int | Sequence[float] = 20,
    step: str | None = None,
) -> Histogram:
    """A histogram of one metric: ``bins`` equal-width bins over its range, or the given edges.

    Values outside explicit edges are counted in the first or last bin, so nothing disappears.
    """
    values = metric_values(db, run_id, metric, step=step)
    return make_histogram(metric, values, bins)


def make_histogram(metric: str, values: Sequence[float], bins: int | Sequence[float]) -> Histogram:
    if isinstance(bins, int):
        if bins < 1:
            raise ValueError("bins must be >= 1")
        lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
        if hi == lo:
            hi = lo + 1.0
        width = (hi - lo) / bins
        edges = (*(lo + i * width for i in range(bins)), hi)
    else:
        edges = tuple(float(e) for e in bins)
        if len(edges) < 2 or any(b <= a for a, b in itertools.pairwise(edges)):
            raise ValueError("bin edges must be increasing, at least two")
    counts = [0] * (len(edges) - 1)
    last = len(counts) - 1
    for v in values:
        i = bisect.bisect_right(edges, v) - 1
        counts[min(max(i, 0), last)] += 1
    return Histogram(metric=metric, edges=edges, counts=tuple(counts), n=len(values))


def time_series(
    db: Database, run_id: int, metric: str, *, since_ns: int | None = None
) -> list[tuple[float, float]]:
    """``(seconds since the run's start, value)`` pairs of one metric, in time order.

    Request metrics are placed at each request's end; resource metrics at each sample.
    """
    run = get_run(db, run_id)
    t0 = run.t0_ns if run is not None and run.t0_ns is not None else 0
    args: list[Any] = [run_id]
    if metric in REQUEST_METRICS:
        sql = (
            f"select t_end_ns t, {metric} v from requests where run_id = ? and warmup = 0 "
            f"and status = 'ok' and {metric} is not null"
        )
        tcol = "t_end_ns"
    elif metric in SAMPLE_METRICS:
        sql = f"select t_ns t, {metric} v from samples where run_id = ? and {metric} is not null"
        tcol = "t_ns"
    else:
        raise ValueError(f"unknown metric {metric!r}")
    if since_ns is not None:
        sql += f" and {tcol} > ?"
        args.append(since_ns)
    sql += " order by t"
    return [((r["t"] - t0) / metrics.NS_PER_S, r["v"]) for r in db.query(sql, args)]


# --- breakdowns (reports: latency by prompt, temperature, concurrency) -------------------------

GROUP_COLUMNS: tuple[str, ...] = ("step", "prompt_label", "concurrency", "temperature")
"""Request columns a run can be broken down by."""


def distinct_values(db: Database, run_id: int, column: str) -> list[Any]:
    """The distinct values of one request column among measured requests, first seen first."""
    if column not in GROUP_COLUMNS:
        raise ValueError(f"cannot group by {column!r}; choose one of {', '.join(GROUP_COLUMNS)}")
    sql = (
        f"select {column} v, min(id) first from requests where run_id = ? and warmup = 0 "
        f"and {column} is not null group by {column} order by first"
    )
    return [r["v"] for r in db.query(sql, [run_id])]


def group_summaries(
    db: Database, run_id: int, column: str, *, slo: Slo | None = None, with_itl: bool = True
) -> list[tuple[Any, StepSummary]]:
    """Statistics of a run's requests grouped by one column, groups in order of first request.

    Warm-up requests and rows without a value in ``column`` are left out. ``StepSummary.step``
    holds the group's value as text.
    """
    if column not in GROUP_COLUMNS:
        raise ValueError(f"cannot group by {column!r}; choose one of {', '.join(GROUP_COLUMNS)}")
    run = get_run(db, run_id)
    if run is None:
        return []
    slo = slo if slo is not None else run_slo(run)
    itl = itl_by_request(db, run_id) if with_itl else {}
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in _requests(db, run_id):
        if r[column] is not None and not r["warmup"]:
            groups.setdefault(r[column], []).append(r)
    return [
        (key, summarize_requests(db, run_id, str(key), rows, slo, itl))
        for key, rows in groups.items()
    ]


def request_outcomes(
    db: Database, run_id: int, *, step: str | None = None
) -> list[tuple[bool, float | None, float | None, float | None]]:
    """``(ok, ttft_ms, tpot_ms, e2e_ms)`` of each measured request that succeeded or failed.

    The per-request inputs of error rate and goodput (cancelled requests are judged by neither),
    for interval estimates of those shares.
    """
    sql = (
        "select status, ttft_ms, tpot_ms, e2e_ms from requests where run_id = ? and warmup = 0 "
        "and status in ('ok', 'error')"
    )
    args: list[Any] = [run_id]
    if step is not None:
        sql += " and step = ?"
        args.append(step)
    return [
        (r["status"] == "ok", r["ttft_ms"], r["tpot_ms"], r["e2e_ms"])
        for r in db.query(sql + " order by id", args)
    ]
