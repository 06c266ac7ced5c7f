"""The backend and run flags of ``llmtop record`` (and of the dashboard), and the plan they make.

One place for the flags of DESIGN.md's CLI section, so ``record`` and ``llmtop`` (which starts
a run in the dashboard) spell them the same: decorate a command with :func:`backend_options`
and :func:`run_options`, then turn its keyword arguments into ``RunFlags.from_options(kw)``
(recorder/flags.py) and a plan with ``plan_from_flags``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from llmtop.core.errors import UsageError
from llmtop.recorder.flags import BACKENDS

F = TypeVar("F", bound=Callable[..., Any])


class OneLineErrors(click.Command):
    """A click command whose bad arguments are one ``llmtop:`` line (exit 2), not a usage box."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            hint = f" (see 'llmtop {self.name} --help')"
            raise UsageError(e.format_message() + hint) from None


def _apply(f: F, options: list[Callable[[F], F]]) -> F:
    for option in reversed(options):
        f = option(f)
    return f


def backend_options(f: F) -> F:
    """``--backend --url --model --api-key-env --server-pid``."""
    return _apply(
        f,
        [
            click.option(
                "--backend",
                type=click.Choice(BACKENDS),
                default="auto",
                show_default=True,
                help="Server API: auto = Ollama at OLLAMA_HOST if it answers, else the "
                "in-repo engine (started as a child 'llmtop serve').",
            ),
            click.option(
                "--url",
                default=None,
                metavar="URL",
                help="Server base URL (openai: http://host:port/v1; "
                "default: OLLAMA_HOST or http://127.0.0.1:11434).",
            ),
            click.option(
                "--model",
                default=None,
                metavar="NAME",
                help="Model to ask for (default: the server's only model).",
            ),
            click.option(
                "--api-key-env",
                default=None,
                metavar="NAME",
                help="Environment variable holding the OpenAI API key "
                "(default OPENAI_API_KEY); the key is never stored.",
            ),
            click.option(
                "--server-pid",
                type=click.IntRange(min=1),
                default=None,
                metavar="PID",
                help="The server's process, when it cannot be found by its port.",
            ),
        ],
    )


def run_options(f: F) -> F:
    """``--scenario`` and the flags that override every step of it."""
    return _apply(
        f,
        [
            click.option(
                "--scenario",
                default=None,
                metavar="NAME|FILE.toml",
                help="A built-in scenario (see 'llmtop scenarios') or a TOML file. "
                "Without it: one step of --prompt.",
            ),
            click.option(
                "--requests",
                type=click.IntRange(min=1),
                default=None,
                metavar="N",
                help="Requests per step (default 10 without a scenario).",
            ),
            click.option(
                "--concurrency",
                type=click.IntRange(1, 4096),
                default=None,
                metavar="N",
                help="Concurrent streams (with --rate: the most requests in flight).",
            ),
            click.option(
                "--duration",
                type=click.FloatRange(min=0, min_open=True),
                default=None,
                metavar="SECONDS",
                help="Run each step this long instead of N requests.",
            ),
            click.option(
                "--rate",
                type=click.FloatRange(min=0, min_open=True),
                default=None,
                metavar="REQ_PER_S",
                help="Open-loop arrivals at this rate (Poisson unless --arrival constant).",
            ),
            click.option(
                "--arrival",
                type=click.Choice(["closed", "constant", "poisson"]),
                default=None,
                help="How requests arrive (closed = each stream sends when its last ended).",
            ),
            click.option(
                "--max-tokens",
                type=click.IntRange(min=1),
                default=None,
                metavar="N",
                help="Most tokens per answer (default 128 without a scenario).",
            ),
            click.option(
                "--temperature",
                type=click.FloatRange(0, 2),
                default=None,
                metavar="T",
                help="Sampling temperature.",
            ),
            click.option(
                "--seed",
                type=click.IntRange(min=0),
                default=None,
                metavar="N",
                help="Seed for Poisson arrivals and the server's sampler (seed + request).",
            ),
            click.option(
                "--prompt",
                default=None,
                metavar="TEXT",
                help='The prompt of every request (default "What is AI?").',
            ),
            click.option(
                "--warmup",
                type=click.IntRange(min=0),
                default=None,
                metavar="N",
                help="Warm-up requests before the first step, flagged and left out of statistics "
                "(default: one per worker, so every slot is warm; 0 for none).",
            ),
            click.option(
                "--unique-prompts",
                is_flag=True,
                default=None,
                help="Start each prompt with its request number (defeats prefix caches).",
            ),
            click.option(
                "--api",
                type=click.Choice(["chat", "generate"]),
                default=None,
                help="Chat (messages) or generate (raw prompt) endpoint.",
            ),
            click.option("--name", default="", metavar="LABEL", help="A label for the run."),
            click.option(
                "--no-tokens",
                is_flag=True,
                help="Do not store per-chunk arrival times (no ITL afterwards).",
            ),
            click.option(
                "--sample-hz",
                type=click.FloatRange(0, 100, min_open=True),
                default=None,
                metavar="HZ",
                help="CPU/memory/GPU samples per second (default 2).",
            ),
            click.option(
                "--workers",
                default=None,
                metavar="N|auto",
                help="Processes that send the requests, each with its own event loop, for "
                "hundreds of streams (auto: from --concurrency and the cores; default 1).",
            ),
            click.option(
                "--timeout",
                type=click.FloatRange(min=0, min_open=True),
                default=None,
                metavar="SECONDS",
                help="Give up on a request silent this long (default 300 s before the "
                "first token, 60 s between chunks).",
            ),
        ],
    )


def replay_options(f: F) -> F:
    """``--replay RUN --replay-speed X --trace FILE.jsonl`` (``record`` only)."""
    return _apply(
        f,
        [
            click.option(
                "--replay",
                type=click.IntRange(min=1),
                default=None,
                metavar="RUN",
                help="Send a stored run's requests again, each at its offset from the first "
                "(open loop), with its API, model, settings, output length, and prompt when "
                "it was kept (else one of its length).",
            ),
            click.option(
                "--replay-speed",
                type=click.FloatRange(min=0, min_open=True),
                default=None,
                metavar="X",
                help="With --replay or --trace: divide the offsets by X (2 = twice as fast).",
            ),
            click.option(
                "--trace",
                type=click.Path(dir_okay=False),
                default=None,
                metavar="FILE.jsonl",
                help="Send a Mooncake-format trace: timestamp (ms), input_length, output_length, "
                "hash_ids (shared 512-token prefixes).",
            ),
        ],
    )
