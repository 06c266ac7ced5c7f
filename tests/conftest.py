"""Fixtures and settings for the whole suite.

OpenMP's idle workers sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE, unless set), set when
this file is imported, before any test module imports torch: the engine arranges the same for
itself when its package is imported first (engine/__init__.py), but the engine tests import
torch before the engine, and torch's default spinning workers then fought the test's own thread
for the two cores of a busy machine: tests/engine with test_sampler_rows.py took 67-110 s, 36 s
with passive workers (under load ~6); each sampler_rows draw test took 10-32 s in the whole
suite against ~1 s alone. Subprocesses (``llmtop serve``) inherit it: the engine's own default.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
