"""``llmtop --proxy``: the proxy as a child process beside the dashboard.

The child is the plain ``llmtop proxy`` command, so what it measures is exactly what the command
measures alone (its own process: the dashboard's drawing never delays a relayed byte), and the
dashboard shows it the way it shows any proxy: by following its run in the database
(recorder/follower.py). The child's ready line says where it listens and which run it records;
its warnings and errors go to a file, shown if it fails.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llmtop.collectors.engine import die_with_parent_hook
from llmtop.core.errors import SourceError

READY = re.compile(r"^llmtop proxy: listening on (\S+) -> (\S+) \((\w+)\), run #(\d+)$")


def proxy_command() -> list[str]:
    """``llmtop proxy`` as this interpreter runs it."""
    exe = Path(sys.executable).parent / "llmtop"
    if exe.exists():
        return [str(exe), "proxy"]
    return [sys.executable, "-c", "from llmtop.app.cli import run; run()", "proxy"]


class ProxyChild:
    """A running ``llmtop proxy`` child; ``start()`` returns once it listens.

    Args:
        args: the proxy's own arguments (``--upstream URL``, ``--listen``, ``--db``...).
    """

    def __init__(self, args: list[str]) -> None:
        self.args = args
        self.url = ""
        self.run_id: int | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._err = tempfile.TemporaryFile(mode="w+", prefix="llmtop-proxy-")

    def start(self, timeout_s: float = 30.0) -> None:
        """Start it and wait for its ready line.

        Raises:
            SourceError: it exited first (its own error line, e.g. the port is taken), or did
                not get ready in ``timeout_s``.
        """
        self._proc = subprocess.Popen(
            [*proxy_command(), *self.args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
            start_new_session=True,  # Ctrl-C in the terminal is the dashboard's to handle
            # a dashboard killed outright (kill -9, its terminal closed) takes its proxy along,
            # which then ends its run as on SIGTERM: no orphan left holding the port
            preexec_fn=die_with_parent_hook(),
        )
        assert self._proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        for line in self._proc.stdout:  # blocks until a line or its exit (it prints at once)
            m = READY.match(line.strip())
            if m:
                self.url, self.run_id = m.group(1), int(m.group(4))
                return  # its last line (at exit) fits the pipe: nothing more to read
            if time.monotonic() > deadline:
                break
        self.stop()
        raise SourceError(self._why())

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _why(self) -> str:
        self._err.seek(0)
        lines = [ln.strip() for ln in self._err.read().splitlines() if ln.strip()]
        last = lines[-1].removeprefix("llmtop: ") if lines else "no output"
        return f"the proxy did not start: {last}"

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM (the run ends ``finished``), then wait; SIGKILL if it does not end."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
