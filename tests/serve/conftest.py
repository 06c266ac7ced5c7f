"""One real ``llmtop serve`` for the session (the model loads once).

The server runs as a child process started exactly as a user (or collectors/engine.py) starts it:
``llmtop serve --port 0``, ready when it prints its ready line. Tests talk to it with the real
``ollama`` and ``openai`` clients.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_process import ServeProcess, start_serve

CONTEXT = 512  # small, so a too-long prompt is cheap to build

PRIVATE_DIRS = {
    "XDG_CACHE_HOME": "cache",
    "XDG_DATA_HOME": "data",
    "XDG_CONFIG_HOME": "config",
    "XDG_STATE_HOME": "state",
    "LLMTOP_ENGINE_CACHE": "cache/llmtop/engine",
    "LLMTOP_DB": "data/llmtop/llmtop.db",
    "LLMTOP_CONFIG_DIR": "config/llmtop",
}
"""Where llmtop and the engine keep caches, data and config (platformdirs reads the XDG ones),
for this process and every child a test starts. Kept in sync with tests/engine/conftest.py."""


@pytest.fixture(scope="session", autouse=True)
def private_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's own cache, data and config dirs, never the user's ~/.cache, ~/.local/share
    or ~/.config: the kernels, the model index and databases land in the session's temp dir.

    The same dir for every fixture of this name (the base temp dir, not a fresh one), so the
    kernels are built once per session (~1 s) whichever test directory runs first.
    """
    home = tmp_path_factory.getbasetemp() / "home"
    with pytest.MonkeyPatch.context() as mp:
        for name, sub in PRIVATE_DIRS.items():
            mp.setenv(name, str(home / sub))  # created by whoever writes there first
        yield home


@pytest.fixture(scope="session")
def server() -> Iterator[ServeProcess]:
    sp = start_serve("--port", "0", "--max-batch", "8", "--ctx", str(CONTEXT))
    yield sp
    assert sp.stop() in (0, -signal.SIGTERM), sp.stderr
    assert not any("Traceback" in line for line in sp.stderr), "\n".join(sp.stderr)


@pytest.fixture(scope="session")
def url(server: ServeProcess) -> str:
    return server.url
