"""``llmtop proxy`` between clients and an upstream that misbehave (README.md, "Proxy").

Each row: a real proxy process in front of the fake server (its own process), a real database,
clients on real sockets. What the client gets is compared with what it gets directly where that
is defined; what the proxy recorded is read from its database after it stopped; and the proxy
must still relay afterwards, log no traceback and end ``finished``.
"""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import psutil
import pytest
from faults_table import check_rows
from support.polling import wait_until
from support.proxy import ProxyProcess, start_proxy
from support.servers import Behavior, FakeServer, refused_url

MODELS = {
    "fake": Behavior(tokens=4),
    "cut": Behavior(tokens=10, fault="cut", fault_after=3),
    "fails": Behavior(fault="status", status=500),
    "slow": Behavior(tokens=40, itl_ms=100),
    "flood": Behavior(tokens=1_000_000, lines_per_write=256),
    "streams": Behavior(tokens=30, itl_ms=5),
}
MiB = 1 << 20
CHAT = "/api/chat"
OPENAI_CHAT = "/v1/chat/completions"


def _body(model: str, api_path: str = CHAT, stream: bool = True, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream,
            **extra}  # fmt: skip


def _rows(db: Path, run_id: int) -> list[dict[str, Any]]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        rows = con.execute("select * from requests where run_id = ? order by id", [run_id])
        return [dict(r) for r in rows]
    finally:
        con.close()


def _chunks(db: Path, run_id: int, request_id: int) -> int:
    con = sqlite3.connect(db)
    try:
        q = "select count(*) from tokens where run_id = ? and request_id = ?"
        return int(con.execute(q, [run_id, request_id]).fetchone()[0])
    finally:
        con.close()


def _finish(pp: ProxyProcess) -> None:
    """The proxy stops cleanly, logged no traceback, and its run is finished."""
    assert pp.stop() == 0, pp.stderr
    assert not any("Traceback" in line for line in pp.stderr), "\n".join(pp.stderr)
    assert pp.rows("select status from runs where id = ?", pp.run_id) == [("finished",)]


def _still_relays(pp: ProxyProcess) -> None:
    r = httpx.post(f"{pp.url}{CHAT}", json=_body("fake", stream=False), timeout=30)
    assert r.status_code == 200, r.text


def _rss(pp: ProxyProcess) -> int:
    return int(psutil.Process(pp.proc.pid).memory_info().rss)


# --- the rows ------------------------------------------------------------------------------------


def upstream_down(fake: FakeServer, tmp: Path) -> None:
    gone = refused_url()
    with start_proxy(gone, tmp / "db", "--backend", "ollama") as pp:
        says = f"llmtop proxy: cannot connect to the upstream {gone}: connection refused"
        r = httpx.post(f"{pp.url}{CHAT}", json=_body("fake"))
        assert (r.status_code, r.json()) == (502, {"error": says})
        r = httpx.post(f"{pp.url}{OPENAI_CHAT}", json=_body("fake"))
        assert r.status_code == 502
        assert r.json() == {"error": {"message": says, "type": "upstream_error", "param": None,
                                      "code": 502}}  # fmt: skip
        assert httpx.get(f"{pp.url}/api/tags").status_code == 502  # relayed untimed, same answer
        with pytest.raises(ollama.ResponseError) as oe:
            ollama.Client(host=pp.url).chat(
                model="fake", messages=[{"role": "user", "content": "x"}]
            )
        assert oe.value.status_code == 502 and says in oe.value.error
        client = openai.OpenAI(base_url=pp.openai_url, api_key="k", max_retries=0)
        with pytest.raises(openai.InternalServerError) as ae:
            client.chat.completions.create(
                model="fake", messages=[{"role": "user", "content": "x"}]
            )
        assert ae.value.status_code == 502 and says in ae.value.message
        _finish(pp)
    rows = _rows(pp.db, pp.run_id)
    assert len(rows) == 4
    assert {(r["status"], r["error_kind"], r["error"]) for r in rows} == {
        ("error", "connect", says)
    }


def upstream_500(fake: FakeServer, tmp: Path) -> None:
    with start_proxy(fake.url, tmp / "db") as pp:
        for path in (CHAT, OPENAI_CHAT):
            direct = httpx.post(f"{fake.url}{path}", json=_body("fails"))
            proxied = httpx.post(f"{pp.url}{path}", json=_body("fails"))
            assert proxied.status_code == direct.status_code == 500
            assert proxied.content == direct.content
        _still_relays(pp)
        _finish(pp)
    rows = _rows(pp.db, pp.run_id)[:2]
    for r in rows:
        assert (r["status"], r["error_kind"], r["http_status"]) == ("error", "http_status", 500)
        assert "fake server error 500" in r["error"]


def _read_lines_until_cut(url: str) -> tuple[list[str], type[Exception] | None]:
    lines: list[str] = []
    try:
        with httpx.stream("POST", url, json=_body("cut"), timeout=30) as resp:
            for line in resp.iter_lines():
                if line:
                    lines.append(re.sub(r'"id":"[^"]*"', '"id":""', line))  # a per-request id
    except httpx.HTTPError as e:
        return lines, type(e)
    return lines, None


def upstream_cut(fake: FakeServer, tmp: Path) -> None:
    with start_proxy(fake.url, tmp / "db") as pp:
        for path in (CHAT, OPENAI_CHAT):
            direct = _read_lines_until_cut(f"{fake.url}{path}")
            proxied = _read_lines_until_cut(f"{pp.url}{path}")
            assert direct[1] is httpx.RemoteProtocolError
            assert proxied == direct
        _still_relays(pp)
        _finish(pp)
    for r in _rows(pp.db, pp.run_id)[:2]:
        assert (r["status"], r["error_kind"], r["chunks"]) == ("error", "protocol", 3), r
        assert r["error"].startswith("stream cut after 3 chunks")
        assert _chunks(pp.db, pp.run_id, r["id"]) == 3


def _raw_post(
    url: str, path: str, body: dict[str, Any], rcvbuf: int | None = None
) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    s = socket.socket()
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect((host, int(port)))
    data = json.dumps(body).encode()
    s.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    return s


def client_gone(fake: FakeServer, tmp: Path) -> None:
    fake.log(clear=True)
    with start_proxy(fake.url, tmp / "db") as pp:
        s = _raw_post(pp.url, CHAT, _body("slow"))
        got = b""
        s.settimeout(30)
        while got.count(b'"content":" tok"') < 2:
            got += s.recv(65536)
        lines = got.count(b'"content":" tok"')
        s.close()
        wait_until(lambda: fake.log()[-1].outcome == "client_gone", what="the upstream closed")
        sent = sum(n for _, n in fake.log()[-1].sends)
        assert sent <= lines + 2, (sent, lines)
        _still_relays(pp)
        _finish(pp)
    r = _rows(pp.db, pp.run_id)[0]
    assert (r["status"], r["error_kind"]) == ("cancelled", "cancelled")
    assert r["error"] == f"the client closed the connection after {r['chunks']} chunks"
    assert r["chunks"] >= 2 and _chunks(pp.db, pp.run_id, r["id"]) == r["chunks"]


def slow_client(fake: FakeServer, tmp: Path) -> None:
    fake.log(clear=True)
    with start_proxy(fake.url, tmp / "db") as pp:
        _still_relays(pp)
        before = _rss(pp)
        s = _raw_post(pp.url, CHAT, _body("flood"), rcvbuf=4096)

        def sent() -> int:
            logs = [x for x in fake.log() if x.model == "flood"]
            return sum(n for _, n in logs[-1].sends) if logs else 0

        def stalled() -> bool:  # the upstream's writes stopped growing for half a second
            a = sent()
            time.sleep(0.5)
            return a > 0 and sent() == a

        wait_until(stalled, what="the upstream's writes to stall")
        held = sent()
        assert held < 100_000, held  # ~12 MB of 120: stopped by backpressure, not by the end
        assert _rss(pp) - before < 64 * MiB
        s.settimeout(30)

        def resumed() -> bool:  # the client reads again (what the buffers held first)
            for _ in range(256):
                s.recv(65536)
            return sent() > held

        wait_until(resumed, what="the upstream to resume")
        s.close()
        wait_until(lambda: fake.log()[-1].outcome == "client_gone", what="the upstream closed")
        _still_relays(pp)
        _finish(pp)
    flood = next(r for r in _rows(pp.db, pp.run_id) if r["model"] == "flood")
    assert (flood["status"], flood["error_kind"]) == ("cancelled", "cancelled")


def _status_of(s: socket.socket) -> tuple[int, bytes]:
    s.settimeout(30)
    data = b""
    while b"\r\n\r\n" not in data:
        more = s.recv(65536)
        if not more:
            break
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(v for k, _, v in (ln.partition(b": ") for ln in head.split(b"\r\n"))
                      if k.lower() == b"content-length"))  # fmt: skip
    while len(body) < length:
        body += s.recv(65536)
    return int(head.split()[1]), body


def body_over_limit(fake: FakeServer, tmp: Path) -> None:
    fake.log(clear=True)
    with start_proxy(fake.url, tmp / "db", "--max-body-bytes", str(MiB)) as pp:
        host, port = pp.url.removeprefix("http://").split(":")
        for path in (CHAT, OPENAI_CHAT):
            with socket.create_connection((host, int(port))) as s:
                s.sendall(
                    f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n".encode()
                )
                status, body = _status_of(s)  # answered without the body ever being sent
            says = ("llmtop proxy: the request body is too large: 10,000,000 bytes, the limit is "
                    "1,048,576 bytes (llmtop proxy --max-body-bytes)")  # fmt: skip
            assert status == 413
            err = json.loads(body)["error"]
            assert (err["message"] if path == OPENAI_CHAT else err) == says
        with socket.create_connection((host, int(port))) as s:
            s.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            piece = b"x" * 65536
            for _ in range(20):  # 1.25 MiB of a body that never ends
                s.sendall(b"%x\r\n%b\r\n" % (len(piece), piece))
            status, body = _status_of(s)
            assert status == 413 and b"more than that, the limit is 1,048,576 bytes" in body
            assert s.recv(1024) == b""  # and the proxy ended the connection
        assert [x for x in fake.log() if x.path == CHAT] == []  # nothing reached the upstream
        exact = _body("fake", stream=False, pad="")
        exact["pad"] = "y" * (MiB - len(json.dumps(exact).encode()))
        r = httpx.post(f"{pp.url}{CHAT}", content=json.dumps(exact).encode(), timeout=30)
        assert r.status_code == 200
        _finish(pp)


def idle_connections(fake: FakeServer, tmp: Path) -> None:
    with start_proxy(fake.url, tmp / "db", "--idle-timeout", "2") as pp:
        before = _rss(pp)
        host, port = pp.url.removeprefix("http://").split(":")
        idle = [socket.create_connection((host, int(port))) for _ in range(300)]
        slowloris = socket.create_connection((host, int(port)))
        slowloris.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Le")
        with httpx.Client(timeout=30) as c:
            for _ in range(10):
                assert (
                    c.post(f"{pp.url}{CHAT}", json=_body("fake", stream=False)).status_code == 200
                )
        assert _rss(pp) - before < 64 * MiB
        t0 = time.monotonic()
        for s in [*idle, slowloris]:
            s.settimeout(30)
            assert s.recv(1024) == b""  # closed by the proxy
            s.close()
        assert time.monotonic() - t0 < 30
        _still_relays(pp)
        _finish(pp)


def second_proxy(fake: FakeServer, tmp: Path) -> None:
    db = tmp / "shared.db"
    with start_proxy(fake.url, db) as a, start_proxy(fake.url, db) as b:
        assert a.run_id != b.run_id
        errors: list[BaseException] = []

        def traffic(pp: ProxyProcess) -> None:
            try:
                with httpx.Client(timeout=30) as c:
                    for _ in range(20):
                        with c.stream("POST", f"{pp.url}{CHAT}", json=_body("streams")) as r:
                            assert r.status_code == 200
                            for _ in r.iter_lines():
                                pass
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=traffic, args=(pp,)) for pp in (a, b) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        _finish(a)
        _finish(b)
    for pp in (a, b):
        rows = _rows(db, pp.run_id)
        assert len(rows) == 40 and all(r["status"] == "ok" and r["chunks"] == 30 for r in rows)
    assert a.rows("pragma integrity_check") == [("ok",)]


CASES: dict[str, Callable[[FakeServer, Path], None]] = {
    "upstream-down": upstream_down,
    "upstream-500": upstream_500,
    "upstream-cut": upstream_cut,
    "client-gone": client_gone,
    "slow-client": slow_client,
    "body-over-limit": body_over_limit,
    "idle-connections": idle_connections,
    "second-proxy": second_proxy,
}


def test_the_readme_lists_exactly_these_faults():
    check_rows("test_faults_proxy.py", CASES)


@pytest.fixture(scope="module")
def fake():
    with FakeServer(MODELS, process=True) as srv:
        yield srv


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("name", list(CASES))
def test_proxy_fault(fake, tmp_path, monkeypatch, name: str, loop: str):
    """Each fault on both event loops the proxy runs on (uvloop by default; see
    app/commands/proxy.py): their transports differ."""
    monkeypatch.setenv("LLMTOP_PROXY_LOOP", loop)
    CASES[name](fake, tmp_path)
