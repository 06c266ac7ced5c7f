"""The dashboard watching a llama-server (the fake server playing it) that another client drives:
no run of ours, and still the header and the server panel say what the server is doing; and
watching nothing, on a machine with no Ollama at the default address."""

from __future__ import annotations

import threading

import httpx
import pytest
from support.dashboard import make_app, wait_for
from support.servers import Behavior, FakeServer, Persona, refused_url

from llmtop.app.widgets.server_panel import ServerPanel, absent_default
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


@pytest.mark.parametrize("given", [False, True], ids=["default-address", "given-url"])
async def test_no_ollama_at_the_default_address_is_one_calm_line(db_path, tmp_path, monkeypatch, given):  # fmt: skip
    """A fresh machine (``auto``, no URL, nothing at Ollama's address): one line saying a run
    uses the in-repo engine, not each endpoint's complaint. A URL the user gave that does not
    answer keeps its complaints: that one is a problem."""
    url = refused_url()
    monkeypatch.setenv("OLLAMA_HOST", url)
    flags = {"backend": "ollama", "url": url} if given else {}
    app = make_app(db_path, tmp_path / "cfg", watch=True, **flags)
    async with app.run_test(size=(160, 40)) as pilot:
        panel = app.screen.query_one(ServerPanel)
        if given:
            await wait_for(pilot, lambda: any("unreachable" in r for _, r in panel.down))
            assert panel.note is None
        else:
            await wait_for(pilot, lambda: panel.note is not None)  # set once complaints came
            where = url.removeprefix("http://")
            assert panel.note == f"no Ollama at {where}: a run launched now (l) uses the in-repo engine"  # fmt: skip
            assert panel.down == ()


def test_the_calm_line_only_replaces_complaints_about_an_absent_server():
    down = (("server:metrics", "http://h:1/metrics unreachable"),)
    assert absent_default(down, (), None) == (down, None)  # not the default address
    assert absent_default((), (), "http://h:1") == ((), None)  # nothing to replace
    assert absent_default(down, (), "http://h:1")[0] == ()
    other = (*down, ("gpu", "NVML error"))
    assert absent_default(other, (), "http://h:1") == (other, None)  # not only the server's
