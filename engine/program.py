"""The engine server as a program: ``python -c "import torch, sys; from llmtop.engine.program
import main; sys.exit(main(sys.argv[1:]))" [options]`` (``python -m llmtop.engine.program``
works too, a little slower).

``llmtop serve`` checks its options and then replaces itself (exec, same pid) with that program,
so that the server runs in a fresh interpreter whose very first import is torch. Measured here
(34-token prompt, median prefill): ~70 ms inside the ``llmtop`` CLI process (which imports numpy,
rich, httpx and sqlite-utils first), ~46 ms under ``python -m``, ~35 ms with torch first. What
was imported before torch changes the speed of its kernels; the cause lies below Python (memory
layout), so the cure is the import order.

Failures print one line on stderr starting with ``llmtop: `` and exit 1 (could not serve) or
2 (bad arguments, bad model file), as the CLI does.
"""

# ruff: noqa: I001  (torch is imported first on purpose: see the module docstring)
from __future__ import annotations

import torch

import errno
import os
import socket
import sys

from llmtop.engine import assemble
from llmtop.engine.errors import EngineError
from llmtop.engine.http_server import bind_socket, is_loopback, run
from llmtop.engine.serve_options import ServeOptions, parse_argv

assert torch  # imported for its side effect on this process only

READY_PREFIX = "llmtop serve: listening on "
"""Launchers (collectors/engine.py) wait for a stdout line starting with this; keep it stable."""


class ServeFailed(Exception):
    """One line for the user and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


PROGRESS_ENV = "LLMTOP_SERVE_PROGRESS"
"""``lines``: the start's progress as lines on stderr even when it is not a terminal (llmtop's
own launcher sets it and relays the last line). Otherwise a pipe gets only warnings, errors and
the ready line, so a script sees one error line when the start fails."""
_status_shown = False


def _say(text: str) -> None:
    """The start's progress on stderr (stdout carries the ready line, a contract with launchers):
    one line rewritten in place on a terminal, lines when asked for, else nothing."""
    global _status_shown
    if sys.stderr.isatty():
        sys.stderr.write(f"\r\033[Kllmtop serve: {text}")
        sys.stderr.flush()
        _status_shown = True
    elif os.environ.get(PROGRESS_ENV) == "lines":
        print(f"llmtop serve: {text}", file=sys.stderr, flush=True)


def _clear() -> None:
    """Erase the progress line on a terminal before a line that stays."""
    global _status_shown
    if _status_shown:
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()
        _status_shown = False


def serve(options: ServeOptions) -> None:
    """Warn about other hosts, bind (a taken port fails before the model loads), load, serve."""
    host, port = options.host, options.port
    if not is_loopback(host):
        print(
            f"llmtop serve: warning: listening on {host}, reachable from other machines; "
            "the API has no authentication",
            file=sys.stderr,
            flush=True,
        )
    try:
        sock = bind_socket(host, port)
    except socket.gaierror as e:
        raise ServeFailed(f"--host {host}: cannot resolve it ({e.strerror})", 2) from None
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ServeFailed(
                f"cannot listen on {host}:{port}: address already in use (another llmtop serve "
                "or Ollama?); choose another with --port, or --port 0 for a free one",
                1,
            ) from None
        raise ServeFailed(f"cannot listen on {host}:{port}: {e.strerror or e}", 1) from None
    try:
        try:
            served = assemble.start(options, progress=_say)
        except EngineError as e:
            raise ServeFailed(str(e), 2) from None

        def ready(url: str) -> None:
            _clear()
            print(f"{READY_PREFIX}{url} (model {served.service.card.name})", flush=True)

        run(
            sock,
            served.service,
            served.metrics,
            on_ready=ready,
            on_stop=served.scheduler.stop,
            idle_timeout_s=options.idle_timeout_s,
        )
    finally:
        sock.close()


def _parse(argv: list[str] | None) -> ServeOptions:
    try:
        return parse_argv(argv)
    except ValueError as e:  # llmtop serve checked the options before it exec'd this program
        raise ServeFailed(str(e), 2) from None


def main(argv: list[str] | None = None) -> int:
    try:
        serve(_parse(argv))
    except ServeFailed as e:
        _clear()
        print(f"llmtop: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        _clear()
        print("llmtop: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
