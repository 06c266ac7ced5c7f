"""What the dashboard tests share: the fake server's known timings, an app on a temporary
database and config dir, and waiting for a condition without sleeping blindly.

A module of tests/support rather than conftest.py: several test folders have a conftest, and
``from conftest import`` picks whichever was imported first, so the suite's order decided which
one a test got."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

from textual.errors import NoWidget
from textual.widget import Widget

from llmtop.app.app import DashboardConfig, LlmtopApp
from llmtop.recorder.flags import RunFlags

TTFT_MS = 200.0
ITL_MS = 20.0
MODEL = "m"


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


async def wait_for(pilot, condition: Callable[[], bool], timeout: float = 60.0) -> None:
    """Let the app run until ``condition()`` holds; fail after ``timeout`` seconds (generous:
    a run starts a recording process, whose Python took ~20 s to start on a loaded machine)."""
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


def drawn_at(app, widget: Widget | None, offset: tuple[int, int] = (0, 0), **meta: object) -> bool:
    """Whether a click at ``offset`` in ``widget`` would land on it: the screen's layout has
    ``widget`` at that point, and what is drawn there carries ``meta`` (a DataTable's ``row``).

    A widget exists, and holds its data, before the layout places it: a footer key mounted a
    moment ago has an empty region, and a click aimed at it lands on whatever is at (0, 0). On
    a quiet machine the layout is done before the next line of a test runs; on a busy one not.
    """
    if widget is None or not widget.region:
        return False
    x, y = widget.region.offset + offset
    try:
        at, _ = app.screen.get_widget_at(x, y)
    except NoWidget:
        return False
    drawn = app.screen.get_style_at(x, y).meta
    return at is widget and all(drawn.get(k) == v for k, v in meta.items())
