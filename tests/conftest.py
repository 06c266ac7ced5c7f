"""Fixtures for the whole suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
for this process and every child a test starts."""


@pytest.fixture(scope="session", autouse=True)
def private_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's own cache, data and config dirs, never the user's ~/.cache, ~/.local/share
    or ~/.config: kernels, the model index, databases and settings land in the session's temp
    dir. The base temp dir (not a fresh one), so the kernels build once per session."""
    home = tmp_path_factory.getbasetemp() / "home"
    with pytest.MonkeyPatch.context() as mp:
        for name, sub in PRIVATE_DIRS.items():
            mp.setenv(name, str(home / sub))  # created by whoever writes there first
        yield home
