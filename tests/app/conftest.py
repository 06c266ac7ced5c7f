"""Fixtures of the dashboard tests: a fake server with known timings, an app on a temporary
database and config dir, and a way to wait for a condition without sleeping blindly."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llmtop.app.app import DashboardConfig, LlmtopApp
from llmtop.recorder.flags import RunFlags
from llmtop.storage.db import open_database

TTFT_MS = 200.0
ITL_MS = 20.0
MODEL = "m"


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


def refused_url() -> str:
    """A loopback URL where nothing listens: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def make_app(db_path: Path, config_dir: Path, **flags: object) -> LlmtopApp:
    """The real app on a temporary database, not sampling between runs unless ``watch``."""
    watch = bool(flags.pop("watch", False))
    start_now = bool(flags.pop("start_now", False))
    return LlmtopApp(
        DashboardConfig(
            db_path=db_path,
            config_dir=config_dir,
            launch=RunFlags(**flags),
            start_now=start_now,
            watch=watch,
            tick_s=0.05,
        )
    )


async def wait_for(pilot, condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Let the app run until ``condition()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await pilot.pause(0.05)


def on_screen(app, screen_type: type, selector: str = "*") -> Callable[[], bool]:
    """A condition: ``app`` shows a ``screen_type`` whose widgets (``selector``) are mounted."""

    def ready() -> bool:
        screen = app.screen
        return isinstance(screen, screen_type) and bool(screen.query(selector))

    return ready
