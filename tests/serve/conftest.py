"""One real ``llmtop serve`` for the session (the model loads once).

The server runs as a child process started exactly as a user (or collectors/engine.py) starts it:
``llmtop serve --port 0``, ready when it prints its ready line. Tests talk to it with the real
``ollama`` and ``openai`` clients.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
from serve_process import ServeProcess, start_serve

CONTEXT = 512  # small, so a too-long prompt is cheap to build


@pytest.fixture(scope="session")
def server() -> Iterator[ServeProcess]:
    sp = start_serve("--port", "0", "--max-batch", "8", "--ctx", str(CONTEXT), progress=True)
    yield sp
    assert sp.stop() in (0, -signal.SIGTERM), sp.stderr
    assert not any("Traceback" in line for line in sp.stderr), "\n".join(sp.stderr)


@pytest.fixture(scope="session")
def url(server: ServeProcess) -> str:
    return server.url
