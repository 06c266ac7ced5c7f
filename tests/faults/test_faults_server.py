"""The server goes away: refused connections at the start of a run and in the middle of one.

Not a row of test_faults_streams.py, whose one run per API needs the server to outlive every
fault. Here the fake server runs as its own process and is stopped while a request streams from
it, so the kernel closes every socket at once, as when a model server crashes or is restarted.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from faults_table import check_rows
from support.cli import assert_one_line_error, llmtop_exe, run_llmtop, stderr_besides_self_check
from support.polling import wait_until
from support.servers import Behavior, FakeServer, refused_url

from llmtop.storage import queries
from llmtop.storage.db import open_readonly

APIS = ("ollama", "openai")
TIMEOUT_S = 10.0
"""``record --timeout``: what a request would wait if a dead server were mistaken for a slow one."""
REQUESTS = 8
HANG = Behavior(tokens=10, fault="hang_mid_stream", fault_after=2, hold_s=60)
"""Request 3: two chunks, then silence until the server is stopped under it."""


def _url(srv: FakeServer | str, api: str) -> str:
    base = srv if isinstance(srv, str) else srv.url
    return base if api == "ollama" else base + "/v1"


def _gone_mid_run(api: str, tmp: Path) -> dict[str, Any]:
    """Record against a server that is stopped while request 3 streams; what came of it."""
    db = tmp / f"gone-{api}.db"
    srv = FakeServer({"fake": Behavior(tokens=3)}, process=True).start()
    try:
        srv.script(Behavior(tokens=3), Behavior(tokens=3), HANG)
        port = srv.port
        cmd = [llmtop_exe(), "record", "--backend", api, "--url", _url(srv, api), "--model",
               "fake", "--requests", str(REQUESTS), "--concurrency", "1", "--unique-prompts",
               "--timeout", str(TIMEOUT_S), "--sample-hz", "1", "--warmup", "0", "--json",
               "--db", str(db)]  # fmt: skip
        env = {**os.environ, "NO_COLOR": "1", "OPENAI_API_KEY": ""}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)  # fmt: skip
        wait_until(
            lambda: len(log := srv.log()) == 3 and len(log[2].sends) >= 2,
            what="request 3 streaming its first two chunks",
        )
    finally:
        srv.stop()  # SIGTERM: the process ends, the kernel closes its sockets
    stdout, stderr = proc.communicate(timeout=60)
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    rows = [dict(r) for r in conn.execute("select * from requests order by id")]
    tokens = dict(conn.execute("select request_id, count(*) from tokens group by request_id"))
    conn.close()
    return {"proc": subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr),
            "rows": rows, "tokens": tokens, "port": port}  # fmt: skip


@pytest.fixture(scope="module")
def gone(tmp_path_factory) -> dict[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("gone")
    return {api: _gone_mid_run(api, tmp) for api in APIS}


def gone_mid_run(request: pytest.FixtureRequest, api: str, tmp: Path) -> None:
    gone = request.getfixturevalue("gone")[api]
    proc, rows = gone["proc"], gone["rows"]
    # The run went on to its end, and no request waited out its 10 s timeout (each request's
    # own e2e, not the process's wall time: a busy machine can take seconds to start Python).
    assert proc.returncode == 0 and stderr_besides_self_check(proc.stderr) == "", proc.stderr
    assert all(r["e2e_ms"] < TIMEOUT_S * 1000 for r in rows), [r["e2e_ms"] for r in rows]
    assert len(rows) == REQUESTS
    assert [r["status"] for r in rows[:2]] == ["ok", "ok"]
    # The request streaming when the server went: cut, its two chunks kept.
    cut = rows[2]
    assert (cut["status"], cut["error_kind"], cut["chunks"]) == ("error", "protocol", 2), cut
    assert gone["tokens"][cut["id"]] == 2
    assert "after 2 chunks" in cut["error"], cut["error"]
    # The next request leaves as the server dies: the kernel may still take its connection on
    # the closing listener and then reset it (a crashing server does the same).
    # Said either way: closed before answering, or (on a new connection) reset by the server.
    after = rows[3:]
    reset = f"cannot connect to 127.0.0.1:{gone['port']}: connection reset by peer"
    if after[0]["error_kind"] == "protocol":
        assert "closed the connection before answering" in after[0]["error"], after[0]
        after = after[1:]
    elif after[0]["error"] == reset:
        assert after[0]["error_kind"] == "connect", after[0]
        after = after[1:]
    # Every request after that: refused at once, said so in one line naming the server.
    for r in after:
        assert (r["status"], r["error_kind"]) == ("error", "connect"), r
        assert r["error"] == f"cannot connect to 127.0.0.1:{gone['port']}: connection refused"
    assert all(r["chunks"] == 0 and r["e2e_ms"] >= 0 for r in rows[3:]), rows[3:]
    # The summary counts them by kind; the run is finished (some requests succeeded).
    summary = json.loads(proc.stdout)
    assert summary["recording"]["status"] == "finished"
    assert summary["overall"]["errors"] == REQUESTS - 2
    kinds = Counter(r["error_kind"] for r in rows[2:])
    assert summary["overall"]["error_kinds"] == dict(kinds)
    assert kinds["protocol"] in (1, 2) and kinds["connect"] >= len(after), kinds


def refused_at_start(request: pytest.FixtureRequest, api: str, tmp: Path) -> None:
    url = _url(refused_url(), api)
    db = tmp / f"refused-{api}.db"
    proc = run_llmtop("record", "--backend", api, "--url", url, "--model", "fake", "--json",
                      "--db", str(db), env={"OPENAI_API_KEY": ""})  # fmt: skip
    host = url.removeprefix("http://").split("/")[0]
    assert_one_line_error(proc, 1, host, "connection refused")
    summary = json.loads(proc.stdout)  # --json still tells a script how it ended
    assert summary["recording"]["status"] == "failed" and host in summary["recording"]["error"]
    assert summary["overall"]["n"] == 0
    run = queries.get_run(open_readonly(db), 1)
    assert run is not None and run.status == "failed" and host in (run.error or "")


CASES: dict[str, Callable[[pytest.FixtureRequest, str, Path], None]] = {
    "gone-mid-run": gone_mid_run,
    "refused-at-start": refused_at_start,
}


def test_the_readme_lists_exactly_these_faults():
    check_rows("test_faults_server.py", CASES)


@pytest.mark.slow
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("name", list(CASES))
def test_server_gone(request, tmp_path, name: str, api: str):
    CASES[name](request, api, tmp_path)
