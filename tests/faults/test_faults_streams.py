"""``llmtop record`` against a server that misbehaves on chosen requests, over both APIs.

One run per API: the real console script, the fake server over real sockets, a real database.
The fake server is scripted so that request i meets fault i (concurrency 1, in order; the server's
own log, which sees each prompt's "Request N.", confirms who got what). Each README row is then
checked on its own request: the right status and ``error_kind``, one line of message, every
token that arrived kept, no longer than its timeout; and the summary counts the errors.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from faults_table import check_rows
from support.cli import llmtop_exe, stderr_besides_self_check
from support.servers import Behavior, FakeServer

APIS = ("ollama", "openai")
TIMEOUT_S = 0.4
"""``record --timeout``: silence allowed before the first token and between chunks."""
SLACK_MS = 1500.0
"""How far past its timeout a request may end on a busy 2-core machine (it must not hang)."""


@dataclass(frozen=True)
class Case:
    """One request's fault and what llmtop must make of it."""

    script: Callable[[str], tuple[Behavior, ...]]
    """The behaviours this request takes, by API (a retry takes the next one)."""
    status: str
    kind: str | None = None
    http: int | None = None
    chunks: int = 0
    """Content chunks that arrived before the fault: all of them must be stored."""
    says: dict[str, str] = field(default_factory=dict)
    """A fragment of the stored message, per API (``"*"``: both)."""
    after: str | None = None
    """``reused``: must go out on a kept-alive connection; ``fresh``: on a new one."""
    check: Callable[[dict[str, Any], str], None] | None = None
    """More assertions on the request's row."""


def same(*behaviors: Behavior) -> Callable[[str], tuple[Behavior, ...]]:
    return lambda api: behaviors


def by_api(ollama: str, openai: str) -> Callable[[str], tuple[Behavior, ...]]:
    """A raw body of our own making per API: bytes no fault mode produces."""
    return lambda api: (Behavior(raw=ollama if api == "ollama" else openai),)


def _ndjson(*objs: str) -> str:
    return "".join(o + "\n" for o in objs)


def _sse(*payloads: str) -> str:
    return "".join(f"data: {p}\n\n" for p in payloads)


_TOKEN_OLLAMA = '{"model":"fake","message":{"role":"assistant","content":" a"},"done":false}'
_TOKEN_OPENAI = '{"choices":[{"index":0,"delta":{"content":" a"},"finish_reason":null}]}'
BIG = 2**70

ABSURD = by_api(
    _ndjson(
        _TOKEN_OLLAMA,
        _TOKEN_OLLAMA,
        '{"model":"fake","message":{"role":"assistant","content":""},"done":true,'
        f'"done_reason":"stop","eval_count":{BIG},"eval_duration":-5,"prompt_eval_count":-1,'
        '"total_duration":1e300,"load_duration":"soon","prompt_eval_duration":1.5}',
    ),
    _sse(
        _TOKEN_OPENAI,
        _TOKEN_OPENAI,
        '{"choices":[{"index":0,"delta":{},"finish_reason":{"odd":1}}],'
        '"timings":{"prompt_ms":1e308,"predicted_ms":NaN}}',
        f'{{"choices":[],"usage":{{"prompt_tokens":-1,"completion_tokens":{BIG}}}}}',
        "[DONE]",
    ),
)
DEEP = by_api(
    _ndjson(_TOKEN_OLLAMA, "[" * 100_000),
    _sse(_TOKEN_OPENAI, "[" * 100_000),
)


def _absurd_ignored(row: dict[str, Any], api: str) -> None:
    assert row["output_tokens"] == 2  # the server's 2**70 is not believed: the chunks counted
    assert row["prompt_tokens"] is None and row["server_tps"] is None
    assert row["server_ttft_ms"] is None and row["load_ms"] is None
    assert row["done_reason"] == ("stop" if api == "ollama" else None)


def _counted(row: dict[str, Any], api: str) -> None:
    assert row["output_tokens"] == 4 and row["prompt_tokens"] is None
    assert row["server_tps"] is None


def _split_whole(row: dict[str, Any], api: str) -> None:
    assert row["output_tokens"] == 4  # " hé🙂" cut inside its multi-byte characters


CASES: dict[str, Case] = {
    "http-429": Case(same(Behavior(fault="status", status=429)), "error", "http_status", 429,
                     says={"*": "fake server error 429 (Retry-After: 1)"}),
    "http-429-empty": Case(same(Behavior(fault="status", status=429, error_body=False)),
                           "error", "http_status", 429, says={"*": "(empty body)"}),
    "http-500": Case(same(Behavior(fault="status", status=500)), "error", "http_status", 500,
                     says={"*": "HTTP 500 Internal Server Error"}),
    "http-500-empty": Case(same(Behavior(fault="status", status=500, error_body=False)),
                           "error", "http_status", 500, says={"*": "(empty body)"}),
    "http-503": Case(same(Behavior(fault="status", status=503)), "error", "http_status", 503,
                     says={"*": "HTTP 503 Service Unavailable"}),
    "http-503-empty": Case(same(Behavior(fault="status", status=503, error_body=False)),
                           "error", "http_status", 503, says={"*": "(empty body)"}),
    "model-gone": Case(same(Behavior(fault="unknown_model")), "error", "http_status", 404,
                       says={"ollama": 'model "fake" not found',
                             "openai": "The model `fake` does not exist"}),
    "close-before-headers": Case(same(Behavior(fault="close_before_headers")), "error",
                                 "protocol", says={"*": "closed the connection before answering"},
                                 after="fresh"),
    "close-on-reuse": Case(same(Behavior(fault="close_before_headers"), Behavior(tokens=3)),
                           "ok", chunks=3, after="reused"),
    "hang-before-headers": Case(same(Behavior(fault="hang_before_headers", hold_s=30)),
                                "error", "timeout", says={"*": f"no first token within {TIMEOUT_S:g} s"}),
    "hang-mid-stream": Case(same(Behavior(tokens=10, fault="hang_mid_stream", fault_after=2,
                                          hold_s=30)),
                            "error", "timeout", chunks=2,
                            says={"*": f"no data for {TIMEOUT_S:g} s after 2 chunks"}),
    "trickle": Case(same(Behavior(tokens=3, fault="trickle", trickle_ms=1000)), "error",
                    "timeout", says={"*": f"no first token within {TIMEOUT_S:g} s"}),
    "cut": Case(same(Behavior(tokens=10, fault="cut", fault_after=3)), "error", "protocol",
                chunks=3, says={"*": "stream cut after 3 chunks"}),
    "malformed": Case(same(Behavior(tokens=10, fault="malformed", fault_after=2)), "error",
                      "protocol", chunks=2, says={"ollama": "malformed line after 2 chunks",
                                                  "openai": "malformed event after 2 chunks"}),
    "deep-nesting": Case(DEEP, "error", "protocol", chunks=1,
                         says={"*": "after 1 chunks (not JSON)"}),
    "error-line": Case(same(Behavior(tokens=10, fault="error_line", fault_after=1)), "error",
                       "protocol", chunks=1, says={"*": "server error after 1 chunks: fake runner crashed"}),
    "invalid-utf8": Case(same(Behavior(tokens=10, fault="invalid_utf8", fault_after=2)), "error",
                         "protocol", chunks=2, says={"*": "not valid UTF-8 after 2 chunks"}),
    "huge-line": Case(same(Behavior(tokens=10, fault="huge_line", fault_after=2)), "error",
                      "protocol", chunks=2, says={"*": "a line longer than 1,048,576 characters"}),
    "wrong-content-type": Case(same(Behavior(fault="wrong_content_type")), "error", "protocol",
                               says={"*": "unexpected Content-Type 'text/html"}),
    "split": Case(same(Behavior(tokens=4, fault="split", text=" hé🙂")), "ok", chunks=4,
                  check=_split_whole),
    "no-timings": Case(same(Behavior(tokens=4, fault="no_timings")), "ok", chunks=4,
                       check=_counted),
    "absurd-numbers": Case(ABSURD, "ok", chunks=2, check=_absurd_ignored),
}  # fmt: skip

GOOD = Behavior(tokens=2)
"""Fillers: a request that answers, so the next one goes out on a kept-alive connection."""
FILLER_CUT = Behavior(fault="cut", fault_after=0)
"""Fillers: the server closes the connection, so the next request goes out on a new one."""


@dataclass
class Recorded:
    """One ``llmtop record`` run over one API, and who got which fault."""

    api: str
    proc: subprocess.CompletedProcess[str]
    rows: dict[int, dict[str, Any]]
    tokens: dict[int, int]
    request_of: dict[str, int]
    fillers: list[int]
    faults_seen: dict[int, list[str | None]]


def _plan() -> list[str | None]:
    """Which case each request is, in order (``None`` and ``__cut``: fillers)."""
    order: list[str | None] = []
    for name, case in CASES.items():
        if case.after == "reused":
            order.append(None)  # answers in full: its connection goes back to the pool
        if case.after == "fresh":
            order.append("__cut")  # the server closes it: the next request connects anew
        order.append(name)
    order += [None, None]  # and the run goes on after every fault
    return order


def _script(api: str, order: list[str | None]) -> list[Behavior]:
    out: list[Behavior] = []
    for name in order:
        if name is None:
            out.append(GOOD)
        elif name == "__cut":
            out.append(FILLER_CUT)
        else:
            out.extend(CASES[name].script(api))
    return out


def _record(api: str, tmp_path) -> tuple[subprocess.Popen[str], FakeServer, list[str | None]]:
    order = _plan()
    srv = FakeServer({"fake": GOOD}).start()
    srv.script(*_script(api, order))
    db = tmp_path / f"{api}.db"
    url = srv.url if api == "ollama" else srv.openai_url
    cmd = [llmtop_exe(), "record", "--backend", api, "--url", url, "--model", "fake",
           "--requests", str(len(order)), "--concurrency", "1", "--unique-prompts",
           "--timeout", str(TIMEOUT_S), "--sample-hz", "1", "--warmup", "0", "--json",
           "--db", str(db)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"} | {"NO_COLOR": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return proc, srv, order


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> dict[str, Recorded]:
    """Both APIs' runs, recorded at the same time (each has its own server and database)."""
    tmp = tmp_path_factory.mktemp("streams")
    started = {api: _record(api, tmp) for api in APIS}
    out: dict[str, Recorded] = {}
    for api, (proc, srv, order) in started.items():
        try:
            stdout, stderr = proc.communicate(timeout=120)
            log = srv.log()
        finally:
            srv.stop()
        done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        conn = sqlite3.connect(tmp / f"{api}.db")
        conn.row_factory = sqlite3.Row
        rows = {r["id"]: dict(r) for r in conn.execute("select * from requests")}
        tokens = dict(conn.execute("select request_id, count(*) from tokens group by request_id"))
        conn.close()
        seen: dict[int, list[str | None]] = {}
        for entry in log:
            m = re.search(r"Request (\d+)\.", json.dumps(entry.body))
            assert m, entry.body
            seen.setdefault(int(m.group(1)), []).append(entry.fault)
        request_of = {name: i + 1 for i, name in enumerate(order) if name in CASES}
        fillers = [i + 1 for i, name in enumerate(order) if name not in CASES]
        out[api] = Recorded(api, done, rows, tokens, request_of, fillers, seen)
    return out


def test_the_readme_lists_exactly_these_faults():
    check_rows("test_faults_streams.py", CASES)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("name", list(CASES))
def test_each_fault_lands_on_its_request(recorded, name: str, api: str):
    case, rec = CASES[name], recorded[api]
    rid = rec.request_of[name]
    # The server's log says this request met this fault (and nothing else did).
    assert rec.faults_seen[rid] == [b.fault for b in case.script(api)], rec.faults_seen[rid]
    row = rec.rows[rid]
    assert (row["status"], row["error_kind"], row["http_status"]) == (
        case.status, case.kind, case.http), row  # fmt: skip
    # Every token that arrived is kept, as a row per chunk and in the request's count.
    assert row["chunks"] == case.chunks and rec.tokens.get(rid, 0) == case.chunks, row
    # Never past its timeout (plus a machine's worth of slack); timeouts take their time.
    assert row["e2e_ms"] is not None and row["e2e_ms"] < TIMEOUT_S * 1000 + SLACK_MS, row
    if case.kind == "timeout":  # counted from before t0 (the connect), so a hair under
        assert row["e2e_ms"] >= TIMEOUT_S * 1000 - 50, row
    if case.status == "error":
        msg = row["error"]
        assert msg and "\n" not in msg and len(msg) <= 400, msg
        fragment = case.says.get(api, case.says.get("*", ""))
        assert fragment in msg, (fragment, msg)
    else:
        assert row["error"] is None and row["ttft_ms"] is not None
    if case.check is not None:
        case.check(row, api)


@pytest.mark.parametrize("api", APIS)
def test_the_run_goes_on_and_the_summary_counts_the_errors(recorded, api):
    rec = recorded[api]
    assert rec.proc.returncode == 0, rec.proc.stderr
    assert stderr_besides_self_check(rec.proc.stderr) == ""
    summary = json.loads(rec.proc.stdout)
    assert summary["recording"]["status"] == "finished" and summary["run"]["status"] == "finished"
    errors = [r for r in rec.rows.values() if r["status"] == "error"]
    kinds: dict[str, int] = {}
    for r in errors:
        kinds[r["error_kind"]] = kinds.get(r["error_kind"], 0) + 1
    expected = sum(c.status == "error" for c in CASES.values()) + sum(
        rec.rows[i]["status"] == "error" for i in rec.fillers
    )
    assert summary["overall"]["errors"] == len(errors) == expected
    assert summary["overall"]["error_kinds"] == kinds
    # The requests after the last fault succeeded: nothing a fault did outlived its request.
    last = max(rec.rows)
    assert rec.rows[last]["status"] == rec.rows[last - 1]["status"] == "ok"
    assert len(rec.rows) == max(rec.rows) == summary["overall"]["n"]
