"""The dashboard shows what a proxy's clients see: a proxy that runs elsewhere on the same
database (Pilot, and the real ``llmtop`` in tmux), and the proxy ``llmtop --proxy`` starts itself
(tmux). The traffic comes from other processes (curl), through a real ``llmtop proxy``."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from support.dashboard import MODEL, TTFT_MS, make_app, wait_for
from support.proxy import start_proxy
from support.raw_upstream import free_port
from support.tmux import Tmux

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl"),
]


def curl_chat(url: str, n: int = 1) -> list[subprocess.Popen[bytes]]:
    """``n`` chat requests from curl processes of their own (not waited for)."""
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    return [
        subprocess.Popen(["curl", "-sS", "-o", os.devnull, "-d", body, f"{url}/api/chat"])
        for _ in range(n)
    ]


async def test_the_dashboard_follows_a_proxy_that_runs_elsewhere(fake_server, tmp_path, db_path):
    with start_proxy(fake_server.url, db_path, "--slo-ttft-ms", "500") as pp:
        app = make_app(db_path, tmp_path / "cfg")
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: app.run_status.state == "observing")
            assert app.run_status.run_id == pp.run_id and app.run_status.backend == "ollama"
            first = curl_chat(pp.url)
            # in flight, with its model (the step column) and its client (the prompt column)
            await wait_for(pilot, lambda: any(r.step == MODEL and r.prompt_label == "127.0.0.1"
                                              for r in app.dashboard.snapshot.in_flight))  # fmt: skip
            rest = curl_chat(pp.url, 5)
            for p in first + rest:
                assert await asyncio.to_thread(p.wait, 30) == 0
            await wait_for(pilot, lambda: app.dashboard.snapshot.table.ok == 6)
            table = app.dashboard.snapshot.table
            assert TTFT_MS - 5 < table.ttft_ms.mean < TTFT_MS + 100
            assert table.slo.ttft_ms == 500 and table.goodput_recent == 1.0
            assert app.run_status.done == 6
            assert await asyncio.to_thread(pp.stop) == 0
            await wait_for(pilot, lambda: app.run_status.state == "finished")
            assert app.run_status.run_id == pp.run_id


needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


@needs_tmux
def test_llmtop_in_a_terminal_shows_a_proxy_elsewhere(fake_server, tmp_path, db_path):
    exe = Path(sys.executable).parent / "llmtop"
    with start_proxy(fake_server.url, db_path) as pp:
        term = Tmux(f"llmtop-proxy-{os.getpid()}", f"{exe} --db {db_path}", (110, 32),
                    {"LLMTOP_CONFIG_DIR": str(tmp_path / "cfg")})  # fmt: skip
        try:
            term.wait_for("observing", f"run #{pp.run_id}")
            for p in curl_chat(pp.url, 3):
                assert p.wait(30) == 0
            screen = term.wait_for("3 done")
            assert MODEL in screen and "127.0.0.1" in screen
            assert pp.stop() == 0
            term.wait_for("finished", f"run #{pp.run_id}")
            term.keys("q")
        finally:
            term.close()


@needs_tmux
def test_llmtop_proxy_in_a_terminal_runs_its_own(fake_server, tmp_path, db_path):
    exe = Path(sys.executable).parent / "llmtop"
    port = free_port()
    cmd = f"{exe} --db {db_path} --proxy --upstream {fake_server.url} --listen 127.0.0.1:{port}"
    term = Tmux(f"llmtop-proxy-own-{os.getpid()}", cmd, (110, 32),
                {"LLMTOP_CONFIG_DIR": str(tmp_path / "cfg")})  # fmt: skip
    try:
        term.wait_for("observing", "run #1", f"proxy http://127.0.0.1:{port}")
        for p in curl_chat(f"http://127.0.0.1:{port}", 3):
            assert p.wait(30) == 0
        term.wait_for("3 done")
        term.keys("q")
        term.wait_for(f"proxy on http://127.0.0.1:{port} stopped; its run #1 is kept")
    finally:
        term.close()
    con = sqlite3.connect(db_path)
    try:
        run = con.execute("select kind, status from runs where id = 1").fetchone()
        reqs = con.execute("select count(*) from requests where status = 'ok'").fetchone()[0]
    finally:
        con.close()
    assert run == ("observed", "finished") and reqs == 3


HOLDER = """
import sys, time
from llmtop.app.proxy_child import ProxyChild
child = ProxyChild(["--upstream", sys.argv[1], "--listen", "127.0.0.1:0", "--db", sys.argv[2]])
child.start()
print(child.pid, child.run_id, flush=True)
time.sleep(600)
"""


def test_a_dashboard_killed_outright_takes_its_proxy_along(fake_server, db_path):
    """kill -9 (or a closed terminal) gives the dashboard no time to stop its proxy: the kernel
    tells the proxy (PR_SET_PDEATHSIG), which ends its run as on SIGTERM and frees its port."""
    import psutil

    holder = subprocess.Popen([sys.executable, "-c", HOLDER, fake_server.url, str(db_path)],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout is not None
    pid, run_id = map(int, holder.stdout.readline().split())
    holder.kill()
    holder.wait()
    try:
        proxy = psutil.Process(pid)
        proxy.wait(60)  # a wait, not a bound: a busy machine takes seconds to end Python
    except psutil.NoSuchProcess:
        pass
    conn = sqlite3.connect(db_path)
    status = conn.execute("select status from runs where id = ?", (run_id,)).fetchone()[0]
    conn.close()
    assert status == "finished"
