"""``llmtop serve``: the in-repo engine behind Ollama's and OpenAI's APIs, with /metrics.

This command checks its options, then replaces the process (exec: same pid, same stdout) with a
fresh interpreter that imports torch first and runs ``llmtop.engine.program``: the engine
prefills about 2x faster there than inside this CLI's interpreter (see engine/program.py).
The options are defined once, with their defaults, ranges and help, in
``llmtop.engine.serve_options.ServeOptions``; click's options are built from it here.
The ready line on stdout is a contract with launchers (collectors/engine.py):
``llmtop serve: listening on http://HOST:PORT (model NAME)``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from llmtop.core.errors import SourceError
from llmtop.engine.serve_options import OptionSpec, ServeOptions, option_specs, program_argv


def _click_option(spec: OptionSpec) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The click option for one of ``ServeOptions``' fields (flag, range, default, help)."""
    kind = click.IntRange(spec.lo, spec.hi) if spec.kind is int else click.STRING
    return click.option(
        spec.flag,
        spec.name,
        type=kind,
        default=spec.default,
        show_default=spec.default is not None,
        help=spec.help,
    )


def _serve_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Every ``ServeOptions`` field as a click option, in the dataclass's order."""
    for spec in reversed(option_specs()):
        command = _click_option(spec)(command)
    return command


@click.command()
@_serve_options
def serve(**values: Any) -> None:
    """Serve the in-repo engine behind Ollama- and OpenAI-compatible APIs.

    Ollama: /api/generate, /api/chat, /api/tags, /api/ps, /api/show, /api/version.
    OpenAI: /v1/chat/completions, /v1/completions, /v1/models. Prometheus: /metrics.
    Continuous batching: requests join the running batch between decode steps.

    Limits: at most --max-batch requests run and --max-queue wait; more get 503 with
    Retry-After. A body over --max-body-bytes gets 413. A prompt longer than --ctx gets 400; a
    max_tokens / num_predict beyond what the context leaves stops there (reason "length").
    Listens on loopback only unless --host says otherwise.
    """
    missing = [
        m for m in ("torch", "gguf", "starlette", "uvicorn") if not importlib.util.find_spec(m)
    ]
    if missing:
        raise SourceError(
            f"the engine needs the 'engine' extra ({', '.join(missing)} missing): "
            "pip install 'llmtop-monitor[engine]'"
        )
    argv = program_argv(ServeOptions(**values))  # click checked every range already
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)
