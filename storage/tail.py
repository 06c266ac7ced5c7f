"""Reading a run as another process writes it: what is new since the last look, as events.

How the dashboard shows a proxy (or a recorder) that runs elsewhere on the same database. Each
:meth:`RunTail.poll` reads only what it has not seen: requests from the oldest one still open,
each open request's chunks past the last one seen (a range of the ``tokens`` primary key), and
samples after the last sample time. What the writer stores is on disk within one flush interval
(250 ms), so a poll a few times a second follows a run within about half a second.

The events rebuilt here are the ones the writer stored, so the live aggregator computes from
them exactly what it computes in the recording's own process.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from sqlite_utils import Database

from llmtop.core.events import (
    Event,
    GpuSampled,
    RequestFailed,
    RequestFinished,
    RequestStarted,
    ResourcesSampled,
    ServerSampled,
    ServerTimings,
    TokenReceived,
)
from llmtop.storage.db import alive


def live_run(db: Database, kind: str = "observed") -> dict[str, Any] | None:
    """The newest run of ``kind`` still ``running`` by a process that is alive, else ``None``."""
    rows = db.query(
        "select id, pid, pid_started_at, params_json, base_url, backend, name, t0_ns from runs "
        "where status = 'running' and kind = ? order by id desc limit 5",
        [kind],
    )
    for row in rows:
        if alive(row["pid"], row["pid_started_at"]):
            return dict(row)
    return None


def run_status(db: Database, run_id: int) -> str | None:
    rows = list(db.query("select status, pid, pid_started_at from runs where id = ?", [run_id]))
    if not rows:
        return None
    row = rows[0]
    if row["status"] == "running" and not alive(row["pid"], row["pid_started_at"]):
        return "interrupted"
    return str(row["status"])


def _started(run_id: int, r: dict[str, Any]) -> RequestStarted:
    return RequestStarted(
        run_id, r["id"], r["t_start_ns"], step=r["step"] or "", prompt_label=r["prompt_label"] or "",
        prompt_chars=r["prompt_chars"] or 0, concurrency=r["concurrency"],
        temperature=r["temperature"], max_tokens=r["max_tokens"], warmup=bool(r["warmup"]),
        params=json.loads(r["params_json"] or "{}"), model=r["model"] or "", api=r["api"] or "",
        path=r["path"] or "", client=r["client"] or "", prompt_hash=r["prompt_hash"] or "",
    )  # fmt: skip


def _ended(run_id: int, r: dict[str, Any], tokens: int, last_ns: int | None) -> Event:
    t_last = r["t_last_ns"] if r["t_last_ns"] is not None else last_ns
    if r["status"] == "ok":
        return RequestFinished(
            run_id, r["id"], r["t_end_ns"], r["t_start_ns"], r["t_first_ns"], t_last,
            r["chunks"] or 0, tokens,
            ServerTimings(prompt_tokens=r["prompt_tokens"], output_tokens=r["output_tokens"],
                          done_reason=r["done_reason"]),
        )  # fmt: skip
    return RequestFailed(
        run_id, r["id"], r["t_end_ns"] or r["t_start_ns"], r["error_kind"] or "cancelled",
        r["error"] or "", t_start_ns=r["t_start_ns"], t_first_ns=r["t_first_ns"],
        t_last_ns=t_last, chunks=r["chunks"] or 0, tokens_counted=r["output_tokens"] or 0,
        http_status=r["http_status"],
    )  # fmt: skip


class _Seen:
    __slots__ = ("last_ns", "next_idx", "tokens")

    def __init__(self) -> None:
        self.next_idx = 0
        self.tokens = 0
        self.last_ns: int | None = None


class RunTail:
    """Follows one run in a database; ``poll(db)`` returns the events of what is new."""

    def __init__(self, run_id: int) -> None:
        self.run_id = run_id
        self._next_request = 1
        self._open: dict[int, _Seen] = {}
        self._t_sample = 0
        self._t_gpu = 0
        self._t_server = 0

    @property
    def open_requests(self) -> int:
        return len(self._open)

    def poll(self, db: Database) -> list[Event]:
        """Events for what was written since the last poll, in a consistent order: a request's
        start, then its chunks, then its end."""
        out: list[Event] = []
        run_id = self.run_id
        since = min([self._next_request, *self._open])
        rows = list(
            db.query(
                "select * from requests where run_id = ? and id >= ? order by id", [run_id, since]
            )
        )
        for r in rows:
            rid = r["id"]
            if rid >= self._next_request:
                if r["t_start_ns"] is None:
                    continue  # not even started: read it next time
                self._next_request = rid + 1
                self._open[rid] = _Seen()
                out.append(_started(run_id, r))
            seen = self._open.get(rid)
            if seen is None:
                continue
            for idx, t_ns, n, text_len in db.execute(
                "select idx, t_ns, n_tokens, text_len from tokens "
                "where run_id = ? and request_id = ? and idx >= ? order by idx",
                [run_id, rid, seen.next_idx],
            ).fetchall():
                out.append(TokenReceived(run_id, rid, idx, t_ns, n, text_len or 0))
                seen.next_idx = idx + 1
                seen.tokens += n
                seen.last_ns = t_ns
            if r["status"] != "running" and r["t_end_ns"] is not None:
                out.append(_ended(run_id, r, seen.tokens, seen.last_ns))
                del self._open[rid]
        out.extend(self._samples(db))
        return out

    def _samples(self, db: Database) -> list[Event]:
        run_id = self.run_id
        out: list[Event] = []
        for r in db.query(
            "select * from samples where run_id = ? and t_ns > ? order by t_ns",
            [run_id, self._t_sample],
        ):
            self._t_sample = r["t_ns"]
            out.append(
                ResourcesSampled(
                    run_id, r["t_ns"], r["cpu_pct"], tuple(json.loads(r["per_core_json"] or "[]")),
                    r["mem_used"], r["mem_total"], r["server_rss"], r["server_cpu_pct"],
                )
            )  # fmt: skip
        for r in db.query(
            "select * from gpu_samples where run_id = ? and t_ns > ? order by t_ns",
            [run_id, self._t_gpu],
        ):
            self._t_gpu = r["t_ns"]
            out.append(
                GpuSampled(
                    run_id, r["t_ns"], r["gpu"], r["name"] or "", r["util_pct"], r["mem_used"],
                    r["mem_total"], r["power_w"], r["temp_c"],
                )
            )  # fmt: skip
        grouped: dict[tuple[int, str], dict[str, float]] = defaultdict(dict)
        for r in db.query(
            "select t_ns, source, key, value from server_samples where run_id = ? and t_ns > ? "
            "order by t_ns",
            [run_id, self._t_server],
        ):
            grouped[(r["t_ns"], r["source"])][r["key"]] = r["value"]
            self._t_server = r["t_ns"]
        out.extend(ServerSampled(run_id, t, src, values) for (t, src), values in grouped.items())
        return out
