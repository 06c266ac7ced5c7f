"""What a client measured, judged against what the fake server did, in a way a busy machine
cannot fail.

The fake server logs when it received each request and when it wrote each chunk, with
``perf_counter_ns`` (CLOCK_MONOTONIC, the clock the client stamps with too, across processes).
On a busy machine (two CPU hogs on two cores, other suites beside them) the server writes late
and the client reads late: against nominal timings (TTFT 200 ms) a test charges the client with
the server's lateness, and within a couple of milliseconds of the server it charges the client
with the machine's. What holds on any machine:

- counts: every chunk the server wrote was read and stamped (exact);
- causality: nothing is read before the server wrote it (exact);
- the stored TTFT is the first stored arrival minus t0, the stored TPOT the first to the last
  over n - 1 tokens (exact: the right chunks, the right count, the right unit);
- order: for the typical request (a median: one request the machine stalled does not decide)
  t0 comes before the server began writing the first chunk. The client stamps t0 just after
  its write, and the server answers a TTFT later, so only a stall of the client longer than
  that TTFT, between the write and the stamp, could break it; a t0 taken at the response
  does;
- closeness: the typical request's first chunk is read within ``LATE_MS`` of its write, and
  chunks are, on average;
- TPOT spans n - 1 gaps, so a read that comes late moves it by that lateness over n - 1: the
  typical request's TPOT is within ``LATE_MS / (n - 1)`` of the server's.

What these guard against is off by far more than ``LATE_MS``, or exactly: a TTFT taken at the
last chunk (+1.26 s for 64 tokens 20 ms apart), t0 taken at the response (after the first
chunk was written), a stamp before the read, the role chunk of an OpenAI stream counted as
content (one chunk too many, read before any content was written), a TPOT over chunks instead
of tokens (the stored TPOT against its own stamps). How close the client is on a
quiet machine (mean error < 2 ms at concurrency 1, < 5 ms at 64) is ``bench/accuracy.py``'s to
print; a t0 that is late by less than a TTFT, or a client a few ms slow, is its to see.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .fake_faults import RequestLog

LATE_MS = 250.0
"""How late a read may come after the server's write, for the typical request on a busy machine.
Measured here with two CPU hogs and other suites running (load ~11-13): mean errors of 1-12 ms,
but a stall of the client process now and then, and at concurrency 64 the first chunks of all
64 requests arrive together, so one stall of ~100 ms delayed every one of them."""

NS_PER_MS = 1_000_000


@dataclass(frozen=True, slots=True)
class Measured:
    """One request as the client measured it (``perf_counter_ns``)."""

    t_start_ns: int
    arrivals_ns: Sequence[int]
    """One stamp per content chunk, in order."""
    output_tokens: int
    ttft_ms: float | None = None
    """The TTFT the client stored or reported, checked against its own stamps."""
    tpot_ms: float | None = None
    """Likewise its TPOT."""


def request_number(body: Mapping[str, Any]) -> int:
    """The N of ``Request N.`` (``--unique-prompts``) in a logged request body."""
    m = re.search(r"Request (\d+)\.", json.dumps(body))
    assert m, body
    return int(m.group(1))


def from_database(db: Any, run_id: int) -> dict[int, Measured]:
    """Request id -> what ``llmtop record`` stored for it (sqlite-utils Database)."""
    arrivals: dict[int, list[int]] = {}
    for req_id, t_ns in db.execute(
        "select request_id, t_ns from tokens where run_id = ? order by request_id, idx", [run_id]
    ).fetchall():
        arrivals.setdefault(req_id, []).append(t_ns)
    rows = db.query("select * from requests where run_id = ? and status = 'ok'", [run_id])
    return {
        r["id"]: Measured(
            r["t_start_ns"],
            arrivals.get(r["id"], []),
            r["output_tokens"],
            r["ttft_ms"],
            r["tpot_ms"],
        )
        for r in rows
    }


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def check(measured: Mapping[Any, Measured], logs: Mapping[Any, RequestLog]) -> str:
    """Assert the module's rules for every request in ``logs``; return the numbers seen (ms)."""
    assert set(measured) == set(logs), (sorted(measured), sorted(logs))
    departure, first, delivery, tpot_err, tpot_room = [], [], [], [], []
    for key, log in logs.items():
        m = measured[key]
        sends = [t for t, _ in log.sends]
        assert len(m.arrivals_ns) == len(sends), (key, len(m.arrivals_ns), len(sends))
        late = [a - s for a, s in zip(m.arrivals_ns, sends, strict=True)]
        assert min(late) >= 0, f"request {key}: a chunk stamped before the server wrote it"
        if m.ttft_ms is not None:
            own = (m.arrivals_ns[0] - m.t_start_ns) / NS_PER_MS
            assert abs(m.ttft_ms - own) < 1e-3, (key, m.ttft_ms, own)
        departure.append((m.t_start_ns - sends[0]) / NS_PER_MS)
        first.append(late[0] / NS_PER_MS)
        delivery += [d / NS_PER_MS for d in late]
        n = m.output_tokens
        if n >= 2 and len(sends) >= 2:
            ours = (m.arrivals_ns[-1] - m.arrivals_ns[0]) / (n - 1)
            if m.tpot_ms is not None:
                assert abs(m.tpot_ms - ours / NS_PER_MS) < 1e-3, (key, m.tpot_ms, ours)
            theirs = (sends[-1] - sends[0]) / (n - 1)
            tpot_err.append(abs(ours - theirs) / NS_PER_MS)
            tpot_room.append(LATE_MS / (n - 1))
    report = (
        f"{len(logs)} requests: t0 before the server's first write median {-_median(departure):.1f} ms; "
        f"first chunk read after its write median {_median(first):.2f} ms, every chunk mean "
        f"{statistics.fmean(delivery):.2f} max {max(delivery):.2f} ms; TPOT off the server's "
        f"median {_median(tpot_err):.3f} ms"
    )
    assert _median(departure) < 0, "t0 is not when the request left: " + report
    assert _median(first) < LATE_MS, "TTFT is not the first chunk's arrival: " + report
    assert statistics.fmean(delivery) < LATE_MS, "chunks stamped long after they came: " + report
    if tpot_err:
        assert _median(tpot_err) <= _median(tpot_room), "TPOT is not the server's: " + report
    return report


def in_order(
    measured: Mapping[int, Measured], logs: Sequence[RequestLog]
) -> tuple[dict[int, Measured], dict[int, RequestLog]]:
    """Pair the requests of a sequential run (one at a time) with the server's log by order:
    for prompts that do not number themselves (a built-in scenario's)."""
    ids = sorted(measured, key=lambda i: measured[i].t_start_ns)
    ordered = sorted(logs, key=lambda log: log.t_recv_ns)
    assert len(ids) == len(ordered), (len(ids), len(ordered))
    return {i: measured[i] for i in ids}, dict(zip(ids, ordered, strict=True))
