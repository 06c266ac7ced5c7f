"""The live aggregator: folds the event stream into rolling windows and an immutable ``Snapshot``.

``add(event)`` runs on the recording thread for every event, so it only appends to a deque
(atomic under the GIL): measuring never waits on the UI. ``snapshot()`` runs on the UI tick: it
drains the deque, folds the events and builds a new ``Snapshot``, or returns the previous one
unchanged (the same object) when nothing arrived, so an idle dashboard does no work.

Every number is a pure function of the events: windows are measured against the newest event's
``t_ns``, never the wall clock, and every statistic comes from core/metrics.py with the same
selection as storage/queries.py (measured requests, warm-up excluded), so the live table of a run
equals its stored summary.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import threading
from collections import deque
from typing import assert_never

from llmtop.core import metrics
from llmtop.core.events import (
    ClientSampled,
    Event,
    GpuSampled,
    RequestFailed,
    RequestFinished,
    RequestStarted,
    ResourcesSampled,
    ServerIdentified,
    ServerSampled,
    SourceDown,
    TokenReceived,
)
from llmtop.core.metrics import EMPTY_STATS, Slo
from llmtop.core.self_check import ClientCheck, bottleneck
from llmtop.core.server_series import canonical_values
from llmtop.live.snapshot import (
    EMPTY_SNAPSHOT,
    Gpu,
    LiveRequest,
    LoadedModel,
    Resources,
    RunTable,
    ServerView,
    Snapshot,
)

__all__ = [
    "EMPTY_SNAPSHOT", "Aggregator", "Gpu", "LiveRequest", "LoadedModel", "Resources", "RunTable",
    "ServerView", "Snapshot",
]  # fmt: skip

WINDOW_NS = 300 * metrics.NS_PER_S
"""The sparklines and their P50/P95 cover the requests that finished in the last five minutes."""
MAX_SERIES = 512
"""Most per-request points kept for a sparkline (wider than any terminal)."""
MAX_VALUES = 5_000
"""Most E2E values kept for the histogram (the newest)."""
MAX_ITL = 5_000
"""Most ITL samples kept for the histogram and its P50/P99 (the newest): plenty for a shape,
and binning them stays ~1 ms a redraw."""
MAX_SAMPLES = 240
"""Resource and server samples kept per series: two minutes at the samplers' 2 Hz."""
MAX_FINISHED = 50
"""Finished requests kept for the requests panel, newest first."""
RECENT_NS = 60 * metrics.NS_PER_S
"""Goodput over the last minute (``RunTable.goodput_recent``): SLO attainment now."""
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
"""The live view runs where the recording does: its suggestion of --workers fits this machine."""
CLIENT_WINDOW = 5
"""Self-check samples (one a second per process) the live verdict looks at: a few seconds, so
one slow second shows without the warning flickering."""


OLLAMA_LOADED = "ollama:loaded:"
"""``ollama:loaded:<model>:size`` and ``...:size_vram``, bytes. Every other server value is read
through core/server_series.canonical_values, the one map of what each server calls a quantity."""


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def _loaded_models(values: dict[str, float]) -> tuple[LoadedModel, ...]:
    sizes: dict[str, dict[str, float]] = {}
    for key, value in values.items():
        if key.startswith(OLLAMA_LOADED):
            model, _, what = key[len(OLLAMA_LOADED) :].rpartition(":")
            if model:
                sizes.setdefault(model, {})[what] = value
    return tuple(
        LoadedModel(name, s.get("size"), s.get("size_vram")) for name, s in sorted(sizes.items())
    )


class _Open:
    """A request in flight: what its metrics will need when it ends."""

    __slots__ = (
        "chars", "counts", "label", "request_id", "step", "t_start", "times", "tokens", "warmup",
    )  # fmt: skip

    def __init__(self, ev: RequestStarted) -> None:
        self.request_id = ev.request_id
        self.step = ev.step
        self.label = ev.prompt_label
        self.chars = ev.prompt_chars
        self.warmup = ev.warmup
        self.t_start = ev.t_ns
        self.times: list[int] = []
        self.counts: list[int] = []
        self.tokens = 0

    def add(self, ev: TokenReceived) -> None:
        self.times.append(ev.t_ns)
        self.counts.append(ev.n_tokens)
        self.tokens += ev.n_tokens

    def view(self) -> LiveRequest:
        tokens = self.tokens
        t1 = self.times[0] if self.times else None
        tn = self.times[-1] if self.times else None
        return LiveRequest(
            self.request_id, self.step, self.label, self.chars, self.warmup, "running",
            self.t_start, tokens, metrics.ttft_ms(self.t_start, t1), None,
            metrics.decode_tps(t1, tn, tokens),
        )  # fmt: skip


class _Series:
    """A bounded series of samples, newest last."""

    __slots__ = ("values",)

    def __init__(self, maxlen: int = MAX_SAMPLES) -> None:
        self.values: deque[float] = deque(maxlen=maxlen)

    def add(self, value: float | None) -> None:
        if value is not None:
            self.values.append(float(value))

    def get(self) -> tuple[float, ...]:
        return tuple(self.values)


class _GpuTrack:
    """One GPU's newest sample and its series."""

    def __init__(self) -> None:
        self.last: GpuSampled | None = None
        self.util, self.mem = _Series(), _Series()

    def add(self, ev: GpuSampled) -> None:
        self.last = ev
        self.util.add(ev.util_pct)
        self.mem.add(ev.mem_used_bytes)

    def view(self) -> Gpu:
        ev = self.last
        assert ev is not None
        return Gpu(
            ev.gpu, ev.name, ev.util_pct, ev.mem_used_bytes, ev.mem_total_bytes, ev.power_w,
            ev.temp_c, self.util.get(), self.mem.get(),
        )  # fmt: skip


class _ServerTrack:
    """One server source's newest sample, what changed since the one before, and the series
    the panel charts."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        """``server:ollama`` (``/api/ps``) or ``server:metrics``: where its samples come from, so
        that endpoint going down clears what it said."""
        self.last: ServerSampled | None = None
        self.canon: dict[str, float] = {}
        self.first: dict[str, float] | None = None
        self.window = metrics.ServerWindow()
        self.means: dict[str, float] = {}
        self.running, self.waiting, self.kv, self.gen = _Series(), _Series(), _Series(), _Series()

    def add(self, ev: ServerSampled) -> None:
        c = canonical_values(ev.values, ev.source)
        prev, prev_ev = self.canon, self.last
        if prev_ev is not None and ev.t_ns > prev_ev.t_ns:
            seconds = (ev.t_ns - prev_ev.t_ns) / metrics.NS_PER_S
            self.window = metrics.server_window(prev, c, seconds)
            self.means.update(self.window.means_ms)
            self.gen.add(self.window.generation_tps)
        if self.first is None:
            self.first = c
        self.last, self.canon = ev, c
        self.running.add(c.get("requests_running"))
        self.waiting.add(c.get("requests_waiting"))
        self.kv.add(_scaled(c.get("kv_cache_usage"), 100))

    def view(self, version: str | None) -> ServerView:
        ev = self.last
        assert ev is not None
        c, w = self.canon, self.window
        since = metrics.server_window(self.first or c, c, None)
        return ServerView(
            source=ev.source,
            t_ns=ev.t_ns,
            models=_loaded_models(ev.values),
            version=version,
            running=c.get("requests_running"),
            waiting=c.get("requests_waiting"),
            kv_cache_pct=_scaled(c.get("kv_cache_usage"), 100),
            generation_tps=w.generation_tps,
            prompt_tps=w.prompt_tps,
            prefix_cache_hit_rate=since.prefix_cache_hit_rate,
            preemptions=since.preemptions,
            means_ms=tuple(sorted(self.means.items())),
            running_series=self.running.get(),
            waiting_series=self.waiting.get(),
            kv_cache_series=self.kv.get(),
            generation_tps_series=self.gen.get(),
            values=tuple(sorted(ev.values.items())),
        )


class Aggregator:
    """Rolling windows over the event stream. ``add`` from any thread, ``snapshot`` from one.

    Args:
        slo: the objectives goodput is judged against (see ``set_slo``).
    """

    def __init__(self, slo: Slo | None = None) -> None:
        self._inbox: deque[Event] = deque()
        self._lock = threading.Lock()  # one snapshot() at a time; add() never takes it
        self._slo = slo or Slo()
        self._snap = EMPTY_SNAPSHOT
        self._events = 0
        self._t_ns: int | None = None
        self._reset_run(None)
        self._cpu, self._mem, self._rss, self._scpu = _Series(), _Series(), _Series(), _Series()
        self._last_res: ResourcesSampled | None = None
        self._gpus: dict[int, _GpuTrack] = {}
        self._servers: dict[str, _ServerTrack] = {}
        self._idents: dict[str, ServerIdentified] = {}
        self._down: dict[str, str] = {}

    # --- any thread --------------------------------------------------------------------------

    def add(self, event: Event) -> None:
        """Take one event; cheap and lock-free, safe to call from the recording thread."""
        self._inbox.append(event)

    @property
    def pending(self) -> int:
        """Events taken but not yet folded into a snapshot."""
        return len(self._inbox)

    # --- the UI thread -----------------------------------------------------------------------

    def set_slo(self, slo: Slo) -> None:
        """Judge goodput against ``slo`` from the next snapshot on (the run's scenario SLOs)."""
        with self._lock:
            self._slo = slo
            self._table_dirty = True
            self._force = True

    def snapshot(self) -> Snapshot:
        """Fold what arrived and return the new snapshot; the same object when nothing did."""
        with self._lock:
            inbox = self._inbox
            n = len(inbox)
            if n == 0 and not self._force:
                return self._snap
            popleft = inbox.popleft
            for _ in range(n):
                self._fold(popleft())
            self._events += n
            self._force = False
            self._snap = self._build()
            return self._snap

    def clear_run(self) -> None:
        """Forget the current run's requests (the next run starts from an empty table)."""
        with self._lock:
            self._reset_run(None)
            self._force = True

    def clear_server(self) -> None:
        """Forget what was read of the server and why it could not be (a new target: a run that
        talks to another server, or watching another address), so nothing shown describes a
        server that is no longer read. Events already taken but not folded are dropped with it."""
        with self._lock:
            for _ in range(len(self._inbox)):
                ev = self._inbox.popleft()
                if not _about_the_server(ev):
                    self._fold(ev)
            self._servers.clear()
            self._idents.clear()
            for source in [s for s in self._down if s.startswith("server")]:
                del self._down[source]
            self._force = True

    # --- folding -----------------------------------------------------------------------------

    def _reset_run(self, run_id: int | None) -> None:
        self._run_id = run_id
        self._step = ""
        self._open: dict[int, _Open] = {}
        self._finished: deque[LiveRequest] = deque(maxlen=MAX_FINISHED)
        self._client: dict[int, deque[ClientSampled]] = {}
        self._window: deque[tuple[int, float | None, float | None]] = deque(maxlen=MAX_SERIES)
        self._ttft: list[float] = []  # sorted, measured ok requests
        self._tpot: list[float] = []
        self._e2e: list[float] = []
        self._tps: list[float] = []
        self._e2e_recent: deque[float] = deque(maxlen=MAX_VALUES)
        self._itl_recent: deque[float] = deque(maxlen=MAX_ITL)
        self._judged: list[tuple[bool, float | None, float | None, float | None]] = []
        self._judged_at: deque[tuple[int, bool, float | None, float | None, float | None]] = deque()
        self._ok = self._errors = self._cancelled = self._warmup = self._out_tokens = 0
        self._t_from: int | None = None
        self._t_to: int | None = None
        self._itl_window = EMPTY_STATS
        self._itl_dirty = False
        self._table = RunTable(slo=self._slo)
        self._table_dirty = False
        self._force = True

    def _request_run(self, run_id: int) -> None:
        if run_id != self._run_id:
            self._reset_run(run_id)

    def _fold(self, ev: Event) -> None:
        t = ev.t_ns
        if self._t_ns is None or t > self._t_ns:
            self._t_ns = t
        match ev:
            case TokenReceived():
                o = self._open.get(ev.request_id) if ev.run_id == self._run_id else None
                if o is not None:
                    o.add(ev)
            case RequestStarted():
                self._request_run(ev.run_id)
                self._open[ev.request_id] = _Open(ev)
                self._step = ev.step
            case RequestFinished():
                self._request_run(ev.run_id)
                self._finish_ok(ev, self._open.pop(ev.request_id, None))
            case RequestFailed():
                self._request_run(ev.run_id)
                self._finish_failed(ev, self._open.pop(ev.request_id, None))
            case ResourcesSampled():
                self._last_res = ev
                self._cpu.add(ev.cpu_pct)
                self._mem.add(ev.mem_used_bytes)
                self._rss.add(ev.server_rss_bytes)
                self._scpu.add(ev.server_cpu_pct)
                self._down.pop("system", None)
                if ev.server_rss_bytes is not None:  # the process is found again
                    self._down.pop("server-process", None)
            case GpuSampled():
                self._gpus.setdefault(ev.gpu, _GpuTrack()).add(ev)
                self._down.pop("gpu", None)
            case ServerSampled():
                endpoint = "server:ollama" if ev.source == "ollama" else "server:metrics"
                self._servers.setdefault(ev.source, _ServerTrack(endpoint)).add(ev)
                self._down.pop(endpoint, None)
                self._down.pop(ev.source, None)
            case ServerIdentified():
                self._idents[ev.kind] = ev
            case SourceDown():
                self._down[ev.source] = ev.reason
                # values that endpoint gave are no longer read: show the reason, not old numbers
                for key in [k for k, tr in self._servers.items() if tr.endpoint == ev.source]:
                    del self._servers[key]
            case ClientSampled():
                if ev.run_id is not None:
                    self._request_run(ev.run_id)
                q = self._client.setdefault(ev.worker, deque(maxlen=CLIENT_WINDOW))
                q.append(ev)
            case _:
                assert_never(ev)

    def _span(self, start: int | None, end: int) -> None:
        if start is not None and (self._t_from is None or start < self._t_from):
            self._t_from = start
        if self._t_to is None or end > self._t_to:
            self._t_to = end

    def _finish_ok(self, ev: RequestFinished, o: _Open | None) -> None:
        m = metrics.request_metrics(ev)
        warmup = o.warmup if o else False
        view = LiveRequest(
            ev.request_id, o.step if o else "", o.label if o else "", o.chars if o else 0,
            warmup, "ok", ev.t_start_ns, m.output_tokens, m.ttft_ms, m.e2e_ms, m.decode_tps,
        )  # fmt: skip
        self._finished.appendleft(view)
        if warmup:
            self._warmup += 1
            return
        self._ok += 1
        self._out_tokens += m.output_tokens
        self._span(ev.t_start_ns, ev.t_ns)
        for values, v in ((self._ttft, m.ttft_ms), (self._tpot, m.tpot_ms),
                          (self._e2e, m.e2e_ms), (self._tps, m.decode_tps)):  # fmt: skip
            if v is not None:
                bisect.insort(values, v)
        self._e2e_recent.append(m.e2e_ms)
        if o is not None:
            self._itl_recent.extend(metrics.itl_ms(o.times, o.counts, m.output_tokens))
            self._itl_dirty = True
        self._window.append((ev.t_ns, m.ttft_ms, m.decode_tps))
        self._judged.append((True, m.ttft_ms, m.tpot_ms, m.e2e_ms))
        self._judged_at.append((ev.t_ns, True, m.ttft_ms, m.tpot_ms, m.e2e_ms))
        self._table_dirty = True

    def _finish_failed(self, ev: RequestFailed, o: _Open | None) -> None:
        start = ev.t_start_ns if ev.t_start_ns is not None else (o.t_start if o else None)
        ttft = None if start is None else metrics.ttft_ms(start, ev.t_first_ns)
        e2e = None if start is None else metrics.e2e_ms(start, ev.t_ns)
        status = "cancelled" if ev.error_kind == "cancelled" else "error"
        warmup = o.warmup if o else False
        view = LiveRequest(
            ev.request_id, o.step if o else "", o.label if o else "", o.chars if o else 0,
            warmup, status, start if start is not None else ev.t_ns, ev.tokens_counted, ttft,
            e2e, None, _note(ev.error_kind, ev.message),
        )  # fmt: skip
        self._finished.appendleft(view)
        if warmup:
            self._warmup += 1
            return
        self._span(start, ev.t_ns)
        if status == "cancelled":
            self._cancelled += 1
        else:
            self._errors += 1
            self._judged.append((False, ttft, None, e2e))
            self._judged_at.append((ev.t_ns, False, ttft, None, e2e))
        self._table_dirty = True

    # --- building ----------------------------------------------------------------------------

    def _recent_goodput(self) -> float | None:
        """Goodput of the requests that ended within ``RECENT_NS`` of the newest event."""
        recent = self._judged_at
        if self._t_ns is not None:
            while recent and recent[0][0] < self._t_ns - RECENT_NS:
                recent.popleft()
        return metrics.goodput(self._slo, (j[1:] for j in recent))

    def _run_table(self) -> RunTable:
        recent = self._recent_goodput()
        if not self._table_dirty and self._table.slo == self._slo:
            if recent != self._table.goodput_recent:
                self._table = dataclasses.replace(self._table, goodput_recent=recent)
            return self._table
        judged = self._ok + self._errors
        self._table = RunTable(
            ttft_ms=metrics.summarize(self._ttft),
            tpot_ms=metrics.summarize(self._tpot),
            e2e_ms=metrics.summarize(self._e2e),
            decode_tps=metrics.summarize(self._tps),
            ok=self._ok,
            errors=self._errors,
            cancelled=self._cancelled,
            warmup=self._warmup,
            output_tokens=self._out_tokens,
            req_per_s=metrics.rate_per_s(self._ok, self._t_from, self._t_to),
            out_tok_per_s=metrics.rate_per_s(self._out_tokens, self._t_from, self._t_to),
            error_rate=self._errors / judged if judged else None,
            goodput=metrics.goodput(self._slo, self._judged),
            goodput_recent=recent,
            slo=self._slo,
        )
        self._table_dirty = False
        return self._table

    def _build(self) -> Snapshot:
        newest = self._t_ns
        window = self._window
        if newest is not None:
            while window and window[0][0] < newest - WINDOW_NS:
                window.popleft()
        ttft = tuple(v for _, v, _ in window if v is not None)
        tps = tuple(v for _, _, v in window if v is not None)
        itl = tuple(self._itl_recent)
        if self._itl_dirty:
            self._itl_window = metrics.summarize(itl)
            self._itl_dirty = False
        return Snapshot(
            version=self._snap.version + 1,
            events=self._events,
            run_id=self._run_id,
            step=self._step,
            t_ns=newest,
            ttft_series=ttft,
            tps_series=tps,
            ttft_window=metrics.summarize(ttft),
            tps_window=metrics.summarize(tps),
            e2e_values=tuple(self._e2e_recent),
            itl_values=itl,
            itl_window=self._itl_window,
            table=self._run_table(),
            resources=self._resources(),
            gpus=tuple(self._gpus[k].view() for k in sorted(self._gpus)),
            servers=tuple(
                self._servers[k].view(self._idents[k].version if k in self._idents else None)
                for k in sorted(self._servers)
            ),
            down=tuple(sorted(self._down.items())),
            in_flight=tuple(o.view() for o in self._open.values()),
            finished=tuple(self._finished),
            client=(client := self._client_check()),
            bottleneck=bottleneck(client, self._table.ttft_ms.p50, CORES),  # table built above
        )

    def _client_check(self) -> ClientCheck | None:
        """The last few seconds of every process: the worst lag and loop, the CPU added up."""
        if not self._client:
            return None
        recent = [q[-1] for q in self._client.values()]
        p99s = [e.loop_lag_ms_p99 for q in self._client.values() for e in q]
        loops = [e.loop_cpu_pct for q in self._client.values() for e in q]
        cpus = [e.cpu_pct for e in recent if e.cpu_pct is not None]
        p50s = [e.loop_lag_ms_p50 for e in recent if e.loop_lag_ms_p50 is not None]
        return ClientCheck(
            loop_lag_ms_p50=max(p50s) if p50s else None,
            loop_lag_ms_p99=max((v for v in p99s if v is not None), default=None),
            cpu_pct=sum(cpus) if cpus else None,
            loop_cpu_pct=max((v for v in loops if v is not None), default=None),
            workers=len(self._client),
        )

    def _resources(self) -> Resources | None:
        ev = self._last_res
        if ev is None:
            return None
        if self._snap.resources is not None and self._snap.resources.t_ns == ev.t_ns:
            return self._snap.resources
        return Resources(
            ev.t_ns, ev.cpu_pct, tuple(ev.per_core), ev.mem_used_bytes, ev.mem_total_bytes,
            ev.server_rss_bytes, ev.server_cpu_pct, self._cpu.get(), self._mem.get(),
            self._rss.get(), self._scpu.get(),
        )  # fmt: skip


def _about_the_server(ev: Event) -> bool:
    """Events that describe the server (its samples, identity, or why it cannot be read)."""
    if isinstance(ev, ServerSampled | ServerIdentified):
        return True
    return isinstance(ev, SourceDown) and ev.source.startswith("server")


def _note(kind: str, message: str) -> str:
    """``kind: message``, without saying the kind twice (``cancelled after 108 chunks``)."""
    return message if message.startswith(kind) else f"{kind}: {message}"
