"""Events to rows: what the writer thread turns a batch of events into, and the SQL it uses.

Kept apart from the writer's threading so each can be read alone. A request is one row updated
as its events arrive (started, finished or failed), so the builder remembers the rows of
requests still open across flushes; the writer forgets them once they are stored closed.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any, assert_never

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
from llmtop.core.metrics import e2e_ms, request_metrics, ttft_ms

REQUEST_COLUMNS: tuple[str, ...] = (
    "run_id", "id", "step", "prompt_label", "prompt_chars", "prompt_tokens", "output_tokens",
    "chunks", "concurrency", "temperature", "max_tokens", "warmup", "t_start_ns", "t_first_ns",
    "t_end_ns", "ttft_ms", "e2e_ms", "tpot_ms", "decode_tps", "overall_tps", "server_ttft_ms",
    "server_tps", "load_ms", "done_reason", "status", "error_kind", "http_status", "error",
    "t_scheduled_ns",
    "model", "api", "path", "client", "prompt_hash", "prompt", "params_json", "t_last_ns",
)  # fmt: skip
UPSERT_REQUEST = (
    f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(REQUEST_COLUMNS))}) "
    "ON CONFLICT(run_id, id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in REQUEST_COLUMNS[2:])
)
INSERT_TOKEN = (
    "INSERT OR REPLACE INTO tokens (run_id, request_id, idx, t_ns, n_tokens, text_len)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
INSERT_SAMPLE = (
    "INSERT INTO samples (run_id, t_ns, cpu_pct, mem_used, mem_total, server_rss, server_cpu_pct,"
    " per_core_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_GPU = (
    "INSERT INTO gpu_samples (run_id, t_ns, gpu, name, util_pct, mem_used, mem_total, power_w,"
    " temp_c) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_SERVER = (
    "INSERT INTO server_samples (run_id, t_ns, source, key, value) VALUES (?, ?, ?, ?, ?)"
)
INSERT_IDENT = (
    "INSERT INTO servers (run_id, t_ns, kind, version, url, series) VALUES (?, ?, ?, ?, ?, ?)"
)
INSERT_DOWN = "INSERT INTO source_down (run_id, t_ns, source, reason) VALUES (?, ?, ?, ?)"
INSERT_CLIENT = (
    "INSERT INTO client_samples (run_id, t_ns, worker, loop_lag_ms_p50, loop_lag_ms_p99,"
    " loop_lag_ms_max, cpu_pct, loop_cpu_pct) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


class Batch:
    """Rows of one flush, built on the writer thread from a list of events."""

    __slots__ = (
        "clients", "downs", "gpus", "idents", "requests", "samples", "servers", "tokens",
    )  # fmt: skip

    def __init__(self) -> None:
        self.tokens: list[TokenReceived] = []
        self.requests: dict[tuple[int, int], dict[str, Any]] = {}
        self.samples: list[tuple[Any, ...]] = []
        self.gpus: list[tuple[Any, ...]] = []
        self.servers: list[tuple[Any, ...]] = []
        self.downs: list[tuple[Any, ...]] = []
        self.clients: list[tuple[Any, ...]] = []
        self.idents: list[tuple[Any, ...]] = []


class RowBuilder:
    """Builds each flush's rows; keeps the rows of requests not yet closed."""

    def __init__(self, store_tokens: bool = True) -> None:
        self.store_tokens = store_tokens
        self.open_requests: dict[tuple[int, int], dict[str, Any]] = {}

    def _request_row(self, run_id: int, request_id: int, b: Batch) -> dict[str, Any]:
        key = (run_id, request_id)
        row = self.open_requests.get(key)
        if row is None:
            row = {"run_id": run_id, "id": request_id, "status": "running", "chunks": 0}
            self.open_requests[key] = row
        b.requests[key] = row
        return row

    def build(self, events: list[Event]) -> Batch:
        """The rows of one flush (runs on the writer thread)."""
        b = Batch()
        token = TokenReceived
        # The hot path: nearly every event is a token; one comprehension each way is fastest.
        if self.store_tokens:  # a TokenReceived is its own row (core/events.py)
            b.tokens = [e for e in events if type(e) is token]
        for ev in [e for e in events if type(e) is not token]:
            match ev:
                case RequestStarted():
                    row = self._request_row(ev.run_id, ev.request_id, b)
                    row.update(
                        step=ev.step,
                        prompt_label=ev.prompt_label,
                        prompt_chars=ev.prompt_chars,
                        concurrency=ev.concurrency,
                        temperature=ev.temperature,
                        max_tokens=ev.max_tokens,
                        warmup=int(ev.warmup),
                        t_start_ns=ev.t_ns,
                        t_scheduled_ns=ev.t_scheduled_ns,
                        model=ev.model or None,
                        api=ev.api or ev.params.get("api"),
                        path=ev.path or None,
                        client=ev.client or None,
                        prompt_hash=ev.prompt_hash or None,
                        prompt=ev.prompt,
                        params_json=json.dumps(ev.params, default=str) if ev.params else None,
                    )
                case RequestFinished():
                    m = request_metrics(ev)
                    row = self._request_row(ev.run_id, ev.request_id, b)
                    row.update(
                        status="ok",
                        t_start_ns=ev.t_start_ns,
                        t_first_ns=ev.t_first_ns,
                        t_last_ns=ev.t_last_ns,
                        t_end_ns=ev.t_ns,
                        chunks=ev.chunks,
                        output_tokens=m.output_tokens,
                        prompt_tokens=ev.server.prompt_tokens,
                        ttft_ms=m.ttft_ms,
                        e2e_ms=m.e2e_ms,
                        tpot_ms=m.tpot_ms,
                        decode_tps=m.decode_tps,
                        overall_tps=m.overall_tps,
                        server_ttft_ms=m.server_ttft_ms,
                        server_tps=m.server_tps,
                        load_ms=m.load_ms,
                        done_reason=ev.server.done_reason,
                    )
                case RequestFailed():
                    row = self._request_row(ev.run_id, ev.request_id, b)
                    start = ev.t_start_ns if ev.t_start_ns is not None else row.get("t_start_ns")
                    row.update(
                        status="cancelled" if ev.error_kind == "cancelled" else "error",
                        error_kind=ev.error_kind,
                        error=ev.message,
                        http_status=ev.http_status,
                        t_end_ns=ev.t_ns,
                        t_first_ns=ev.t_first_ns,
                        t_last_ns=ev.t_last_ns,
                        chunks=ev.chunks,
                        output_tokens=ev.tokens_counted,
                        ttft_ms=None if start is None else ttft_ms(start, ev.t_first_ns),
                        e2e_ms=None if start is None else e2e_ms(start, ev.t_ns),
                    )
                    if start is not None:
                        row["t_start_ns"] = start
                case ResourcesSampled():
                    b.samples.append(
                        (
                            ev.run_id, ev.t_ns, ev.cpu_pct, ev.mem_used_bytes, ev.mem_total_bytes,
                            ev.server_rss_bytes, ev.server_cpu_pct, json.dumps(ev.per_core),
                        )
                    )  # fmt: skip
                case GpuSampled():
                    b.gpus.append(
                        (
                            ev.run_id, ev.t_ns, ev.gpu, ev.name, ev.util_pct, ev.mem_used_bytes,
                            ev.mem_total_bytes, ev.power_w, ev.temp_c,
                        )
                    )  # fmt: skip
                case ServerSampled():
                    b.servers.extend(
                        (ev.run_id, ev.t_ns, ev.source, k, v) for k, v in ev.values.items()
                    )
                case ServerIdentified():
                    b.idents.append(
                        (ev.run_id, ev.t_ns, ev.kind, ev.version, ev.url, ",".join(ev.series))
                    )
                case SourceDown():
                    b.downs.append((ev.run_id, ev.t_ns, ev.source, ev.reason))
                case ClientSampled():
                    b.clients.append(
                        (
                            ev.run_id, ev.t_ns, ev.worker, ev.loop_lag_ms_p50, ev.loop_lag_ms_p99,
                            ev.loop_lag_ms_max, ev.cpu_pct, ev.loop_cpu_pct,
                        )
                    )  # fmt: skip
                case TokenReceived():
                    pass
                case _:
                    assert_never(ev)
        return b

    def stored(self, b: Batch) -> None:
        """``b`` is committed: forget the requests it closed."""
        for key, row in b.requests.items():
            if row["status"] != "running":
                self.open_requests.pop(key, None)


def write_batch(
    conn: sqlite3.Connection,
    b: Batch,
    slice_rows: int = 0,
    pause: Callable[[], object] | None = None,
) -> None:
    """Insert ``b``'s rows (the caller holds the transaction); ``pause()`` between each
    ``slice_rows`` token rows (the writer thread lets others run)."""
    tokens = b.tokens
    step = slice_rows if pause is not None and slice_rows else len(tokens)
    for i in range(0, len(tokens), step or 1):
        if i and pause is not None:
            pause()
        conn.executemany(INSERT_TOKEN, tokens if step == len(tokens) else tokens[i : i + step])
    if b.requests:
        conn.executemany(
            UPSERT_REQUEST,
            [tuple(r.get(c) for c in REQUEST_COLUMNS) for r in b.requests.values()],
        )
    if b.samples:
        conn.executemany(INSERT_SAMPLE, b.samples)
    if b.gpus:
        conn.executemany(INSERT_GPU, b.gpus)
    if b.servers:
        conn.executemany(INSERT_SERVER, b.servers)
    if b.downs:
        conn.executemany(INSERT_DOWN, b.downs)
    if b.clients:
        conn.executemany(INSERT_CLIENT, b.clients)
    if b.idents:
        conn.executemany(INSERT_IDENT, b.idents)
