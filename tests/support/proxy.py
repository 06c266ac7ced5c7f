"""Start ``llmtop proxy`` as a child process exactly as a user does, and wait for its ready line:
``llmtop proxy: listening on URL -> UPSTREAM (BACKEND), run #N``. Also the names the proxy tests
share (here, not in a conftest: ``from conftest import`` picks whichever conftest came first)."""

from __future__ import annotations

import os
import queue
import re
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from support.cli import llmtop_exe

MODEL = "fake"
"""The proxy tests' everyday model at the fake server (tests/proxy/conftest.py)."""
TIMED = "timed"
"""Their model with known timings: TTFT ``TTFT_MS``."""
TTFT_MS = 200.0

READY = re.compile(r"^llmtop proxy: listening on (\S+) -> (\S+) \((\w+)\), run #(\d+)$")


@dataclass
class ProxyProcess:
    """A running ``llmtop proxy`` child: where it listens, its run, everything it printed."""

    proc: subprocess.Popen[str]
    db: Path = Path()
    url: str = ""
    upstream: str = ""
    backend: str = ""
    run_id: int = 0
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)

    @property
    def openai_url(self) -> str:
        return f"{self.url}/v1"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send ``sig`` (if still running), wait for the exit, and for its output to be read."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        for t in self._threads:
            t.join(5)
        return code

    def rows(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        """Rows of ``sql`` from its database, read-only (it may be writing)."""
        con = sqlite3.connect(f"{self.db.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()

    def wait_rows(
        self, sql: str, *params: object, until: Callable[[list[tuple[object, ...]]], bool],
        timeout: float = 20,
    ) -> list[tuple[object, ...]]:  # fmt: skip
        """Poll ``sql`` until ``until(rows)`` (what it writes is on disk within 250 ms)."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.rows(sql, *params)
            if until(rows):
                return rows
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not in the database in {timeout}s: {rows[:10]} ({len(rows)} rows)"
                )
            time.sleep(0.05)

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _pump(stream, sink: list[str], lines: queue.Queue[tuple[str, str]], tag: str) -> None:
    for line in stream:
        sink.append(line.rstrip("\n"))
        lines.put((tag, line.rstrip("\n")))


def start_proxy(
    upstream: str, db: Path, *args: str, listen: str = "127.0.0.1:0", timeout: float = 60,
    env: dict[str, str] | None = None,
) -> ProxyProcess:  # fmt: skip
    """Start ``llmtop proxy --upstream UPSTREAM --db DB --listen LISTEN ARGS`` and wait until
    it listens (raises with its stderr if it exits first)."""
    cmd = [llmtop_exe(), "proxy", "--upstream", upstream, "--db", str(db)]
    if listen:
        cmd += ["--listen", listen]
    proc = subprocess.Popen(
        [*cmd, "--sample-hz", "2", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NO_COLOR": "1", **(env or {})},
    )
    pp = ProxyProcess(proc, db)
    lines: queue.Queue[tuple[str, str]] = queue.Queue()
    for stream, sink, tag in ((proc.stdout, pp.stdout, "out"), (proc.stderr, pp.stderr, "err")):
        t = threading.Thread(target=_pump, args=(stream, sink, lines, tag), daemon=True)
        t.start()
        pp._threads.append(t)
    deadline = time.monotonic() + timeout
    while True:
        try:
            tag, line = lines.get(timeout=0.1)
        except queue.Empty:
            if proc.poll() is not None and not any(t.is_alive() for t in pp._threads):
                raise AssertionError(
                    f"llmtop proxy exited {proc.returncode}: {pp.stderr}"
                ) from None
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"llmtop proxy not ready in {timeout}s: {pp.stderr}") from None
            continue
        m = READY.match(line) if tag == "out" else None
        if m:
            pp.url, pp.upstream, pp.backend, run = m.groups()
            pp.run_id = int(run)
            return pp
