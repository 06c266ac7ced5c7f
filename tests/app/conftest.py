"""Fixtures of the dashboard tests: a fake server with known timings and a temporary database
(the helpers they use are in support/dashboard.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.dashboard import ITL_MS, MODEL, TTFT_MS

from llmtop.storage.db import open_database


@pytest.fixture(scope="module")
def fake_server() -> Iterator[object]:
    """A fake Ollama/OpenAI server in its own process: TTFT 200 ms, ITL 20 ms, 12 tokens."""
    from support.servers import Behavior, FakeServer

    behavior = Behavior(ttft_ms=TTFT_MS, itl_ms=ITL_MS, tokens=12)
    with FakeServer({MODEL: behavior}, process=True) as srv:
        yield srv


@pytest.fixture()
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "llmtop.db"
    open_database(path).close()
    return path
