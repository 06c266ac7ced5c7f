"""Start ``llmtop serve`` as a child process exactly as a user or a launcher does, and wait for
its ready line."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

from support.cli import llmtop_exe

READY = "llmtop serve: listening on "


@dataclass
class ServeProcess:
    """A running ``llmtop serve`` child: its URL and everything it printed."""

    proc: subprocess.Popen[str]
    url: str = ""
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def _pump(stream, sink: list[str], lines: queue.Queue[tuple[str, str]] | None, tag: str) -> None:
    for line in stream:
        sink.append(line.rstrip("\n"))
        if lines is not None:
            lines.put((tag, line.rstrip("\n")))


def start_serve(*args: str, timeout: float = 180, progress: bool = False) -> ServeProcess:
    """Start ``llmtop serve ARGS`` and wait for its ready line (or its exit); ``progress`` asks
    for its start's progress as lines on stderr, as llmtop's own launcher does."""
    extra = {"LLMTOP_SERVE_PROGRESS": "lines"} if progress else {}
    proc = subprocess.Popen(
        [llmtop_exe(), "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NO_COLOR": "1", **extra},
    )
    sp = ServeProcess(proc)
    lines: queue.Queue[tuple[str, str]] = queue.Queue()
    for stream, sink, tag in ((proc.stdout, sp.stdout, "out"), (proc.stderr, sp.stderr, "err")):
        threading.Thread(target=_pump, args=(stream, sink, lines, tag), daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        try:
            tag, line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            proc.kill()
            raise AssertionError(f"llmtop serve not ready in {timeout}s: {sp.stderr}") from None
        if tag == "out" and line.startswith(READY):
            sp.url = line.removeprefix(READY).split()[0]
            return sp
        if proc.poll() is not None and lines.empty():
            raise AssertionError(f"llmtop serve exited {proc.returncode}: {sp.stderr}")
