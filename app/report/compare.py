"""Runs side by side: each metric's change against the first run, judged better, worse or noise.

A change counts only when it is both real and large enough to matter:
- real: the bootstrap interval of the difference (from each run's stored per-request values,
  seeded, so the verdict is stable) excludes zero; a difference the requests' own spread explains
  is "within noise". ITL gaps are resampled as what they are, groups per request that move
  together (noise.clustered_n_eff), not as independent values, which would make intervals
  several times too narrow;
- large enough: at least ``threshold`` (5 % by default) of the baseline, because two runs on a
  shared machine drift by a few percent for reasons no resampling of one run can see.
Rows without per-request values (req/s, tok/s, resources) are judged by the threshold alone.
Shares (error rate, goodput) change in percentage points, with the same interval test on each
request's 0/1 outcome.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from llmtop.app.report import noise
from llmtop.core import fmt, metrics
from llmtop.core.errors import UsageError
from llmtop.core.metrics import Slo
from llmtop.storage import queries
from llmtop.storage.db import Database
from llmtop.storage.queries import RunRow, StepSummary

Better = Literal["lower", "higher"] | None
Verdict = Literal["better", "worse", "noise", "changed", "n/a"]

DEFAULT_THRESHOLD = 0.05
SHARE_THRESHOLD = 0.01
"""Shares (error rate, goodput) within one percentage point are the same."""
CONFIDENCE = 0.95


@dataclass(frozen=True, slots=True)
class Spec:
    """One compared metric: where it comes from, how to show it, which way is better."""

    key: str
    group: str
    label: str
    get: Callable[[StepSummary], float | int | None]
    better: Better
    source: str | None = None
    """Per-request metric whose values give the interval (``ttft_ms``, ``itl_ms``, ...)."""
    statistic: str | int = "mean"
    share: str | None = None
    """For shares: ``"error"`` or ``"goodput"``, judged on each request's 0/1 outcome."""
    show: Callable[[float | int | None], str] = fmt.num


SERVER_GROUP = "Server's own"
"""Rows read from the servers' /metrics (counter increases and histogram means)."""


def _server(name: str) -> Callable[[StepSummary], float | int | None]:
    def get(s: StepSummary) -> float | int | None:
        m = s.server_metrics
        return None if m is None else getattr(m, name)

    return get


SPECS: tuple[Spec, ...] = (
    Spec("ttft_ms.mean", "TTFT ms", "mean", lambda s: s.ttft_ms.mean, "lower", "ttft_ms", "mean"),
    Spec("ttft_ms.p50", "TTFT ms", "p50", lambda s: s.ttft_ms.p50, "lower", "ttft_ms", 50),
    Spec("ttft_ms.p95", "TTFT ms", "p95", lambda s: s.ttft_ms.p95, "lower", "ttft_ms", 95),
    Spec("tpot_ms.mean", "TPOT ms", "mean", lambda s: s.tpot_ms.mean, "lower", "tpot_ms", "mean"),
    Spec("tpot_ms.p50", "TPOT ms", "p50", lambda s: s.tpot_ms.p50, "lower", "tpot_ms", 50),
    Spec("tpot_ms.p95", "TPOT ms", "p95", lambda s: s.tpot_ms.p95, "lower", "tpot_ms", 95),
    Spec("itl_ms.p50", "ITL ms", "p50", lambda s: s.itl_ms.p50, "lower", "itl_ms", 50),
    Spec("itl_ms.p95", "ITL ms", "p95", lambda s: s.itl_ms.p95, "lower", "itl_ms", 95),
    Spec("e2e_ms.mean", "E2E ms", "mean", lambda s: s.e2e_ms.mean, "lower", "e2e_ms", "mean"),
    Spec("e2e_ms.p50", "E2E ms", "p50", lambda s: s.e2e_ms.p50, "lower", "e2e_ms", 50),
    Spec("e2e_ms.p95", "E2E ms", "p95", lambda s: s.e2e_ms.p95, "lower", "e2e_ms", 95),
    Spec("e2e_ms.p99", "E2E ms", "p99", lambda s: s.e2e_ms.p99, "lower", "e2e_ms", 99),
    Spec(
        "decode_tps.mean",
        "Throughput",
        "decode tok/s (mean)",
        lambda s: s.decode_tps.mean,
        "higher",
        "decode_tps",
        "mean",
    ),
    Spec(
        "decode_tps.p50",
        "Throughput",
        "decode tok/s (p50)",
        lambda s: s.decode_tps.p50,
        "higher",
        "decode_tps",
        50,
    ),
    Spec("req_per_s", "Throughput", "requests/s", lambda s: s.req_per_s, "higher"),
    Spec("out_tok_per_s", "Throughput", "output tok/s", lambda s: s.out_tok_per_s, "higher"),
    Spec(
        "error_rate",
        "Throughput",
        "error rate",
        lambda s: s.error_rate,
        "lower",
        share="error",
        show=fmt.share,
    ),
    Spec(
        "goodput",
        "Throughput",
        "goodput",
        lambda s: s.goodput,
        "higher",
        share="goodput",
        show=fmt.share,
    ),
    Spec("cpu_pct_mean", "Resources", "machine CPU % (mean)", lambda s: s.cpu_pct_mean, None),
    # Not the machine's memory: other processes' memory is not the server's doing. The server
    # process's own (RSS) is what a change in the server moves.
    Spec(
        "server_rss_peak",
        "Resources",
        "server RSS (peak)",
        lambda s: s.server_rss_peak,
        None,
        show=fmt.size,
    ),
    Spec("gpu_util_mean", "Resources", "GPU util % (mean)", lambda s: s.gpu_util_mean, None),
    Spec(
        "server_cpu_pct_mean",
        "Resources",
        "server CPU % (mean)",
        lambda s: s.server_cpu_pct_mean,
        None,
    ),
    Spec("server.generation_tps", SERVER_GROUP, "server output tok/s",
         _server("generation_tps"), "higher"),
    Spec("server.ttft_ms_mean", SERVER_GROUP, "server TTFT ms (mean)",
         _server("ttft_ms_mean"), "lower"),
    Spec("server.tpot_ms_mean", SERVER_GROUP, "server TPOT ms (mean)",
         _server("tpot_ms_mean"), "lower"),
    Spec("server.queue_ms_mean", SERVER_GROUP, "server queue ms (mean)",
         _server("queue_ms_mean"), "lower"),
    Spec("server.prefill_ms_mean", SERVER_GROUP, "server prefill ms (mean)",
         _server("prefill_ms_mean"), "lower"),
    Spec("server.prefix_cache_hit_rate", SERVER_GROUP, "server prefix-cache hits",
         _server("prefix_cache_hit_rate"), None, show=fmt.share),
    Spec("server.preemptions", SERVER_GROUP, "server preemptions",
         _server("preemptions"), "lower", show=fmt.count),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Change:
    """One run's value against the baseline's."""

    delta: float | None
    relative: float | None
    """(candidate - baseline) / baseline; for shares, ``None`` (``delta`` is in points)."""
    interval: tuple[float, float] | None
    """Bootstrap interval of the difference, in the metric's unit."""
    verdict: Verdict
    reason: str


@dataclass(frozen=True, slots=True)
class Row:
    spec: Spec
    values: tuple[float | int | None, ...]
    changes: tuple[Change | None, ...]
    """One per run; ``None`` for the baseline."""


@dataclass(frozen=True, slots=True)
class Comparison:
    runs: tuple[RunRow, ...]
    step: str | None
    """The step compared, or ``None`` for whole runs."""
    rows: tuple[Row, ...]
    threshold: float
    confidence: float
    notes: tuple[str, ...]
    servers: tuple[str, ...] = ()
    """Each run's server (``vllm 0.32.0``), from its own metrics, else its backend."""


@dataclass(frozen=True, slots=True)
class RunSample:
    """What one run contributes: its statistics and the per-request values behind them."""

    run: RunRow
    summary: StepSummary
    values: dict[str, list[float]]
    outcomes: list[tuple[bool, float | None, float | None, float | None]]
    slo: Slo
    groups: dict[str, list[list[float]]] = field(default_factory=dict)
    """Sources whose values come in groups (``itl_ms``: one list per request), resampled with
    the spread that grouping gives (noise.clustered_n_eff)."""


def _share_values(sample: RunSample, kind: str) -> list[float]:
    if kind == "error":
        return [0.0 if ok else 1.0 for ok, *_ in sample.outcomes]
    return [float(metrics.meets_slo(sample.slo, *o)) for o in sample.outcomes]


def judge(
    spec: Spec,
    base: RunSample,
    cand: RunSample,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    confidence: float = CONFIDENCE,
) -> Change:
    """The change of one metric from ``base`` to ``cand`` and whether it matters."""
    a, b = spec.get(base.summary), spec.get(cand.summary)
    if a is None or b is None:
        return Change(None, None, None, "n/a", "not measured in both runs")
    delta = float(b) - float(a)
    interval = None
    if spec.share is not None:
        va, vb = _share_values(base, spec.share), _share_values(cand, spec.share)
        interval = noise.bootstrap_diff_ci(va, vb, "mean", confidence=confidence)
        relative = None
        small = abs(delta) < SHARE_THRESHOLD
    else:
        if spec.source is not None and spec.source in base.groups and spec.source in cand.groups:
            interval = noise.clustered_diff_ci(
                base.groups[spec.source],
                cand.groups[spec.source],
                spec.statistic,
                confidence=confidence,
            )
        elif spec.source is not None:
            interval = noise.bootstrap_diff_ci(
                base.values.get(spec.source, []),
                cand.values.get(spec.source, []),
                spec.statistic,
                confidence=confidence,
            )
        relative = noise.relative_change(float(a), float(b))
        small = abs(relative) < threshold if relative is not None else delta == 0
    # Small first: a change under the threshold reads "same" whatever its interval; a large one
    # whose interval spans zero reads "not significant" (never "within noise" beside -92 %).
    if small:
        return Change(delta, relative, interval, "noise", "below threshold")
    if interval is not None and interval[0] <= 0 <= interval[1]:
        return Change(delta, relative, interval, "noise", "interval contains zero")
    if spec.better is None:
        return Change(delta, relative, interval, "changed", "no better direction")
    improved = delta < 0 if spec.better == "lower" else delta > 0
    return Change(delta, relative, interval, "better" if improved else "worse", "significant")


def compare_samples(
    samples: Sequence[RunSample],
    *,
    step: str | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    confidence: float = CONFIDENCE,
) -> Comparison:
    """Every metric of every run against the first run (pure: no database)."""
    base = samples[0]
    rows = []
    for spec in SPECS:
        values = tuple(spec.get(s.summary) for s in samples)
        if all(v is None for v in values):
            continue
        if spec.key == "goodput" and not any(s.slo.is_set for s in samples):
            continue
        later = [
            judge(spec, base, s, threshold=threshold, confidence=confidence) for s in samples[1:]
        ]
        changes: tuple[Change | None, ...] = (None, *later)
        rows.append(Row(spec, values, changes))
    return Comparison(
        runs=tuple(s.run for s in samples),
        step=step,
        rows=tuple(rows),
        threshold=threshold,
        confidence=confidence,
        notes=tuple(differences(samples)),
        servers=tuple(server_name(s) for s in samples),
    )


SERVER_CPU_SPREAD = 0.25
"""Server CPU (mean) differing by more than this share of the larger one: the runs did not get
the same machine (another process held a core), or the server ran with other threads."""
OTHER_LOAD_CORES = 0.5
"""CPU used outside the server differing by more than this many cores: the machine was busier
during one run."""


def server_name(s: RunSample) -> str:
    """``vllm 0.32.0``, ``llama.cpp``: the server a run measured, from its own metrics."""
    m = s.summary.server_metrics
    if m is None:
        return s.run.backend or "—"
    return f"{m.kind} {m.version}" if m.version else m.kind


def _cores(run: RunRow) -> float | None:
    h = run.host
    n = h.get("cpus_allowed") or h.get("cores_logical")
    return float(n) if n else None


def other_load_cores(s: RunSample) -> float | None:
    """Cores busy outside the server process during the run (llmtop itself included)."""
    o, cores = s.summary, _cores(s.run)
    if o.cpu_pct_mean is None or o.server_cpu_pct_mean is None or cores is None:
        return None
    return max(0.0, o.cpu_pct_mean / 100 * cores - o.server_cpu_pct_mean / 100)


def load_notes(samples: Sequence[RunSample]) -> list[str]:
    """Warnings that the runs did not have the same machine: server CPU or other load apart."""
    notes = []
    scpu = [s.summary.server_cpu_pct_mean for s in samples]
    known = [v for v in scpu if v is not None]
    spread = (max(known) - min(known)) / max(known) if known and max(known) > 0 else 0.0
    if len(known) == len(samples) and spread > SERVER_CPU_SPREAD:
        shown = " vs ".join(f"{fmt.num(v)} %" for v in known)
        notes.append(
            f"the server's CPU differs ({shown}): a starved or differently threaded server "
            "explains a change better than the code does"
        )
    other = [other_load_cores(s) for s in samples]
    got = [v for v in other if v is not None]
    if len(got) == len(samples) and max(got) - min(got) > OTHER_LOAD_CORES:
        shown = " vs ".join(f"{v:.1f}" for v in got)
        notes.append(f"the machine's load outside the server differs ({shown} cores busy)")
    hosts = {(s.run.host.get("hostname"), s.run.host.get("cpu"), _cores(s.run)) for s in samples}
    if len(hosts) > 1:
        notes.append("the runs ran on different machines or CPU allowances")
    return notes


def differences(samples: Sequence[RunSample]) -> list[str]:
    """What differs between the runs besides the numbers: worth knowing before reading them."""
    notes = []
    servers = [server_name(s) for s in samples]
    kinds = {s.summary.server_metrics.kind for s in samples if s.summary.server_metrics}
    if len(kinds) > 1:
        notes.append("the runs measure different servers: " + " vs ".join(servers))
    elif len(set(servers)) > 1:
        notes.append("the runs differ in server: " + " vs ".join(servers))
    for attr, what in (
        ("scenario", "scenario"),
        ("model", "model"),
        ("backend", "backend"),
        ("base_url", "server URL"),
    ):
        seen = [_shown_setting(s.run, attr) for s in samples]
        if len(set(seen)) > 1:
            notes.append(f"the runs differ in {what}: " + " vs ".join(seen))
    setups = [setup_of(s.run, s.summary.step or None) for s in samples]
    for key, what in SETUP_WORDS:
        seen = [u.get(key, "—") for u in setups]
        if len(set(seen)) > 1:
            notes.append(
                f"the runs differ in {what}: " + " vs ".join(seen) + ", which moves the numbers"
            )
    notes += load_notes(samples)
    bad = [s.run for s in samples if s.run.status != "finished"]
    for r in bad:
        notes.append(f"run {r.id} is {r.status}: its numbers cover what it recorded")
    slos = {(s.slo.ttft_ms, s.slo.tpot_ms, s.slo.e2e_ms) for s in samples}
    if len(slos) > 1:
        notes.append("the runs have different SLOs: goodput is judged against each run's own")
    return notes


SETUP_WORDS: tuple[tuple[str, str], ...] = (
    ("concurrency", "concurrency"),
    ("load", "arrivals"),
    ("prompts", "prompts"),
    ("max_tokens", "max tokens"),
    ("temperature", "temperature"),
    ("api", "API"),
)
"""Settings of a run's steps that change what is measured, and how a note names them."""


def _shown_setting(run: RunRow, attr: str) -> str:
    """A run attribute as compared: the model's short name; no URL for an engine llmtop started
    (its port is a free one picked per run: two engine runs are the same server)."""
    value = getattr(run, attr) or "—"
    if attr == "model":
        return fmt.model_name(value)
    if attr == "base_url" and run.backend == "engine" and _loopback(value):
        return "the engine llmtop started"
    return str(value)


def _loopback(url: str) -> bool:
    host = url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


def setup_of(run: RunRow, step: str | None) -> dict[str, str]:
    """What a run (or one of its steps) asked of the server, setting by setting, as text:
    steps joined by commas (``1, 2, 4, 8``). From the scenario kept in ``params_json``."""
    steps = [s for s in run.params.get("steps", []) if step is None or s.get("name") == step]
    prompts = run.params.get("prompts", {})

    def prompt_text(label: str) -> str:
        p = prompts.get(label, {})
        size = f"{p['tokens']} tokens" if p.get("tokens") else f"{p.get('chars', '?')} chars"
        return f"{label} ({size})"

    def load(s: dict[str, object]) -> str:
        if s.get("rate") is None:
            return "closed loop"
        return f"{s.get('arrival')} {s['rate']:g} req/s"

    out: dict[str, str] = {}
    columns = {
        "concurrency": lambda s: "—" if s.get("concurrency") is None else str(s["concurrency"]),
        "load": load,
        "prompts": lambda s: " + ".join(prompt_text(p) for p in s.get("prompts") or []) or "—",
        "max_tokens": lambda s: str(s.get("max_tokens") or "—"),
        "temperature": lambda s: "—" if s.get("temperature") is None else f"{s['temperature']:g}",
        "api": lambda s: str(s.get("api") or "—"),
    }
    for key, show in columns.items():
        values = [show(s) for s in steps]
        if values:
            out[key] = (
                ", ".join(dict.fromkeys(values)) if len(set(values)) == 1 else ", ".join(values)
            )
    return out


VALUE_SOURCES: tuple[str, ...] = ("ttft_ms", "tpot_ms", "e2e_ms", "decode_tps")
"""Per-request values; ``itl_ms`` is loaded by request, as groups."""


def load_sample(db: Database, run_id: int, step: str | None) -> RunSample:
    """One run's statistics and per-request values (of one step, or of the whole run).

    Raises:
        UsageError: no such run, or the run has no such step.
    """
    summary = queries.run_summary(db, run_id)
    if summary is None:
        raise UsageError(f"no run with id {run_id} in this database (see 'llmtop runs')")
    if step is None:
        chosen = summary.overall
    else:
        found = [s for s in summary.steps if s.step == step]
        if not found:
            names = ", ".join(s.step for s in summary.steps if s.step) or "none"
            raise UsageError(f"run {run_id} has no step {step!r} (its steps: {names})")
        chosen = found[0]
    values = {m: queries.metric_values(db, run_id, m, step=step) for m in VALUE_SOURCES}
    groups = {"itl_ms": queries.itl_groups(db, run_id, step=step)}
    values["itl_ms"] = [v for g in groups["itl_ms"] for v in g]
    outcomes = queries.request_outcomes(db, run_id, step=step)
    return RunSample(summary.run, chosen, values, outcomes, summary.slo, groups)


def shared_steps(db: Database, run_ids: Sequence[int]) -> list[str]:
    """Steps (by name) present in every run, in the first run's order.

    Raises:
        UsageError: a run does not exist.
    """
    per_run = []
    for rid in run_ids:
        s = queries.run_summary(db, rid, with_itl=False)
        if s is None:
            raise UsageError(f"no run with id {rid} in this database (see 'llmtop runs')")
        per_run.append([st.step for st in s.steps])
    first = per_run[0] if per_run else []
    return [name for name in first if name and all(name in other for other in per_run[1:])]


def load_comparison(
    db: Database,
    run_ids: Sequence[int],
    *,
    step: str | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> Comparison:
    """Read the runs and compare them against the first.

    Raises:
        UsageError: fewer than two runs, a missing run or step.
    """
    if len(run_ids) < 2:
        raise UsageError("compare needs at least two runs: llmtop compare A B [C...]")
    samples = [load_sample(db, rid, step) for rid in run_ids]
    return compare_samples(samples, step=step, threshold=threshold)
