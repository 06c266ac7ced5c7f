"""The rich consoles the subcommands print through, built one way.

Emoji codes are off: what llmtop prints (run, step, model names) is shown as written, ``:fire:``
included, and rich's emoji table (2 ms to load) is never read. A table printed to a file or a
pipe gets every cell whole, unwrapped, at any width.
"""

from __future__ import annotations

from rich.console import Console


def cli_console(*, stderr: bool = False, width: int | None = None) -> Console:
    return Console(stderr=stderr, width=width, emoji=False)


def table_console() -> Console:
    """The terminal's width on a terminal; on a file or a pipe, wide enough for whole rows."""
    console = cli_console()
    return console if console.is_terminal else cli_console(width=1000)
