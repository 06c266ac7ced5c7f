"""Fixtures of the proxy tests: a fake model server in its own process, and one real
``llmtop proxy`` in front of it, writing a real SQLite file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.proxy import MODEL, TIMED, TTFT_MS, ProxyProcess, start_proxy
from support.servers import Behavior, FakeServer

ITL_MS = 20.0


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServer]:
    """``fake``: 8 tokens 2 ms apart; ``timed``: TTFT 200 ms, ITL 20 ms, 8 tokens."""
    models = {
        MODEL: Behavior(tokens=8, itl_ms=2),
        TIMED: Behavior(ttft_ms=TTFT_MS, itl_ms=ITL_MS, tokens=8),
    }
    with FakeServer(models, process=True) as srv:
        yield srv


@pytest.fixture(scope="module")
def proxy_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("proxy") / "llmtop.db"


@pytest.fixture(scope="module")
def proxy(fake: FakeServer, proxy_db: Path) -> Iterator[ProxyProcess]:
    """A proxy in front of ``fake`` for the whole module; stopped (SIGTERM) at its end."""
    with start_proxy(fake.url, proxy_db) as pp:
        yield pp
        assert pp.stop() == 0, pp.stderr
        assert not any("Traceback" in line for line in pp.stderr), "\n".join(pp.stderr)
