"""The dashboard watching a llama-server (the fake server playing it) that another client drives:
no run of ours, and still the header and the server panel say what the server is doing."""

from __future__ import annotations

import threading

import httpx
from support.dashboard import make_app, wait_for
from support.servers import Behavior, FakeServer, Persona

from llmtop.app.widgets.server_panel import ServerPanel
from llmtop.app.widgets.status_line import StatusLine

SLOW = Behavior(ttft_ms=10, itl_ms=20, tokens=1000)
"""An outside client's long answer: 20 s, cut short when the test ends."""


async def test_header_says_what_a_server_driven_by_others_is_doing(db_path, tmp_path):
    with FakeServer({"smollm2": SLOW}, persona=Persona("llama.cpp")) as srv:
        stop = threading.Event()

        def outside_client() -> None:
            body = {"model": "smollm2", "stream": True, "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
            with (
                httpx.Client(timeout=30) as c,
                c.stream("POST", srv.openai_url + "/chat/completions", json=body) as r,
            ):
                for _ in r.iter_bytes():
                    if stop.is_set():
                        return

        client = threading.Thread(target=outside_client, daemon=True)
        client.start()
        app = make_app(db_path, tmp_path / "cfg", backend="openai", url=srv.openai_url, watch=True)
        try:
            async with app.run_test(size=(160, 40)) as pilot:
                line = app.screen.query_one(StatusLine)
                await wait_for(pilot, lambda: "1 running" in line.server)
                assert line.server.startswith("llama.cpp b0-unknown · 1 running")
                assert app.run_status.state == "idle" and app.run_status.run_id is None
                (view,) = app.screen.query_one(ServerPanel).servers
                assert (view.source, view.version, view.running) == ("llama.cpp", "b0-unknown", 1)
        finally:
            stop.set()
            client.join(30)
