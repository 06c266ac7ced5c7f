"""Stale kept-alive connections never fail a request (issue 16): a server that closes after every
response (llama-server's recorded headers, then a close), and one that closes idle connections.

The fake server closes at the socket, so aiohttp finds out only when its loop next reads: a request
sent at once goes out on a dead connection, as it did against the real llama-server.
"""

from __future__ import annotations

import sqlite3
import time

import pytest
from support.cli import run_llmtop
from support.collect import Sink
from support.servers import Behavior, ConnPolicy, FakeServer, llama_server_conn, recorded

from llmtop.collectors.openai_compat import OpenAIBackend
from llmtop.core.events import RequestFinished
from llmtop.core.requests import GenerationRequest


def req(i: int, model: str = "m") -> GenerationRequest:
    return GenerationRequest(run_id=1, request_id=i, model=model, prompt=f"req-{i} What is AI?")


def wait_for_idle_close(srv: FakeServer, n: int, timeout_s: float = 10.0) -> None:
    """Block (the client's loop does not run, so it cannot notice the close) until the server has
    closed ``n`` idle connections."""
    deadline = time.monotonic() + timeout_s
    while srv.conn_counts()["idle_closed"] < n:
        assert time.monotonic() < deadline, "the server never closed the idle connection"


LLAMA_BODY = recorded("llama-server-stream-body.txt")
"""One streamed chat completion as llama-server sent it: 5 tokens, usage and timings."""


async def test_a_server_that_closes_after_every_response_is_detected():
    llama = Behavior(raw=LLAMA_BODY)  # its headers, its body, its close
    with FakeServer({"m": llama}, conn=llama_server_conn()) as srv:
        sink = Sink()
        async with OpenAIBackend(srv.openai_url) as b:
            for i in range(8):  # sequential: each request goes out as the last one ends
                await b.stream(req(i), sink)
            http = b._http
            assert http.fresh_only and http.reused_ok == 0
            assert http.stale <= 2  # then every request got a connection of its own
        logs = srv.log()
    assert len(logs) == 8 and all(r.outcome == "done" for r in logs)
    by_prompt = {r.body["messages"][-1]["content"].split()[0]: r for r in logs}
    for i in range(8):
        fin = sink.finished(i)
        started = sink.started(i)
        server = by_prompt[f"req-{i}"]
        # t0 is the write that reached the server: after a dead connection's write, if any
        assert started.t_ns <= fin.t_start_ns <= server.t_recv_ns
        assert fin.chunks == fin.output_tokens == 5


async def test_a_connection_closed_while_idle_is_replaced_without_failing():
    with FakeServer({"m": Behavior(tokens=2)}, conn=ConnPolicy(idle_close_ms=50)) as srv:
        sink = Sink()
        async with OpenAIBackend(srv.openai_url) as b:
            await b.stream(req(1), sink)
            wait_for_idle_close(srv, 1)
            await b.stream(req(2), sink)  # reuses the dead connection, then a new one
            await b.stream(req(3), sink)
            await b.stream(req(4), sink)
            http = b._http
            assert http.stale == 1 and not http.fresh_only
            assert http.reused_ok >= 1  # the pool still works
        logs = srv.log()
    assert [r.outcome for r in logs] == ["done"] * 4
    assert logs[2].peer == logs[3].peer  # 3 and 4: one kept-alive connection
    assert sink.started(2).t_ns < sink.finished(2).t_start_ns <= logs[1].t_recv_ns
    for i in (1, 2, 3, 4):
        assert isinstance(sink.final(i), RequestFinished)


async def test_a_real_failure_on_the_new_connection_names_its_cause():
    with FakeServer({"m": Behavior(tokens=2)}) as srv:
        srv.script(
            Behavior(tokens=2),
            Behavior(fault="close_before_headers"),
            Behavior(fault="close_before_headers"),
        )
        sink = Sink()
        async with OpenAIBackend(srv.openai_url) as b:
            await b.stream(req(1), sink)
            await b.stream(req(2), sink)
        assert len(srv.log()) == 3  # once on the kept-alive connection, once on a new one
    failed = sink.failed(2)
    assert failed.error_kind == "protocol"
    assert failed.message == (
        "the server closed the connection before answering (on a new connection too)"
    )


@pytest.mark.parametrize(
    ("name", "conn", "extra"),
    [
        ("llama-server", llama_server_conn(), ("--concurrency", "4", "--requests", "32")),
        # issue 16's run: 8 warm-up requests at once leave 8 pooled connections, then one worker
        ("llama-server-late", llama_server_conn(late=True),
         ("--scenario", "concurrency", "--requests", "8")),
        # open loop: connections idle between requests, some just as long as the server allows
        ("idle-close", ConnPolicy(idle_close_ms=15),
         ("--concurrency", "4", "--requests", "32", "--rate", "60", "--arrival", "constant")),
    ],
)  # fmt: skip
def test_record_over_closing_servers_has_no_failures(tmp_path, name, conn, extra):
    db = tmp_path / f"{name}.db"
    with FakeServer({"m": Behavior(tokens=4, itl_ms=1)}, conn=conn, process=True) as srv:
        proc = run_llmtop(
            "record", "--backend", "openai", "--url", srv.openai_url, "--model", "m",
            "--sample-hz", "1", "--db", str(db), "--quiet", "--unique-prompts", *extra,
        )  # fmt: skip
        logs = srv.log()
    assert proc.returncode == 0, proc.stderr
    with sqlite3.connect(db) as c:
        rows = c.execute("select status, count(*) from requests group by status").fetchall()
        n = c.execute("select count(*) from requests").fetchone()[0]
    assert rows == [("ok", n)]
    assert n >= 32 and len(logs) == n  # each request answered once: none lost, none twice
    assert all(r.outcome == "done" for r in logs)
