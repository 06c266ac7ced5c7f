"""``llmtop serve``'s options, defined once: ``ServeOptions`` holds each option's type, default,
flag, range and help. The CLI builds its click options from ``option_specs()``
(app/commands/serve.py), the engine program its argparse parser (``parse_argv``), and the CLI
hands a checked ``ServeOptions`` to the program as argv (``program_argv``).

Standard library only: the CLI imports this to build ``llmtop serve --help`` (without the
engine's extra installed, too), and the program it starts imports torch before anything else.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

DEFAULT_CONTEXT = 4096
"""Tokens per sequence unless --ctx says otherwise: Ollama's default num_ctx. The KV cache holds
``max_batch`` of them, allocated up front (and touched only as used): 8 x 4096 tokens of SmolLM2
take 0.75 GB in float16 (1.5 GB in float32 where the engine's attention kernel is not built)."""
DEFAULT_MAX_QUEUE = 64
"""Waiting jobs beyond the running batch (8 x the default batch of 8), as Ollama's
OLLAMA_MAX_QUEUE bounds its own queue."""
DEFAULT_MAX_BODY_BYTES = 1 << 20
"""1 MiB: a prompt of ~250k tokens, far beyond any context the engine serves."""
DEFAULT_IDLE_TIMEOUT_S = 30

PROGRAM = "import torch, sys; from llmtop.engine.program import main; sys.exit(main(sys.argv[1:]))"
"""What ``llmtop serve`` execs (``python -c PROGRAM ARGV``): torch before anything else, even
before the llmtop package, which makes prefill faster (measured: see program.py)."""


def _option(flag: str, default: Any, doc: str, lo: int | None = None, hi: int | None = None) -> Any:
    """A ``ServeOptions`` field with its command-line flag, help text and allowed range."""
    return field(default=default, metadata={"flag": flag, "help": doc, "lo": lo, "hi": hi})


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """``llmtop serve``'s options, in the order ``--help`` lists them; checked on creation."""

    host: str = _option(
        "--host",
        "127.0.0.1",
        "Address to listen on. Anything but loopback is reachable from other machines.",
    )
    port: int = _option(
        "--port", 11435, "TCP port; 0 picks a free one (the ready line says which).", 0, 65535
    )
    model: str = _option(
        "--model",
        "smollm2",
        "'smollm2' (bundled SmolLM2-135M-Instruct) or a Llama-architecture FILE.gguf.",
    )
    max_batch: int = _option(
        "--max-batch",
        8,
        "Sequences decoded together in one batched step; more requests wait in a queue.",
        1,
        64,
    )
    context_length: int | None = _option(
        "--ctx",
        None,
        "Tokens per sequence, prompt and output together (default: "
        f"{DEFAULT_CONTEXT} as Ollama, or the model's own context if shorter).",
        16,
        131072,
    )
    threads: int | None = _option(
        "--threads", None, "torch CPU threads for the engine (default: one per core).", 1, 256
    )
    max_queue: int = _option(
        "--max-queue",
        DEFAULT_MAX_QUEUE,
        "Requests waiting for a batch slot; more are refused at once with 503 and a "
        "Retry-After header (seconds) instead of queueing without bound.",
        0,
        100_000,
    )
    max_body_bytes: int = _option(
        "--max-body-bytes",
        DEFAULT_MAX_BODY_BYTES,
        "Largest request body; a larger one gets 413, refused before it is read.",
        1024,
        1 << 30,
    )
    idle_timeout_s: int = _option(
        "--idle-timeout",
        DEFAULT_IDLE_TIMEOUT_S,
        "Seconds a connection may take to send a complete request (from when it opens, and "
        "between requests); idle and slowloris connections are closed after it.",
        1,
        3600,
    )

    def __post_init__(self) -> None:
        for spec in option_specs():
            value = getattr(self, spec.name)
            if value is not None and not spec.admits(value):
                raise ValueError(f"{spec.flag} {value!r}: {spec.expects()}")


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """One option as a command-line parser needs it (read from ``ServeOptions``' fields)."""

    name: str
    """The ``ServeOptions`` field."""
    flag: str
    kind: type[int] | type[str]
    default: int | str | None
    help: str
    lo: int | None
    hi: int | None

    def admits(self, value: object) -> bool:
        if self.kind is int:
            return (
                isinstance(value, int)
                and not isinstance(value, bool)
                and (self.lo is None or value >= self.lo)
                and (self.hi is None or value <= self.hi)
            )
        return isinstance(value, str)

    def expects(self) -> str:
        if self.kind is str:
            return "expected text"
        return f"expected a whole number from {self.lo} to {self.hi}"


@functools.cache
def option_specs() -> tuple[OptionSpec, ...]:
    """Every option of ``llmtop serve``, in ``ServeOptions``' order."""
    hints = typing.get_type_hints(ServeOptions)
    return tuple(
        OptionSpec(
            name=f.name,
            flag=f.metadata["flag"],
            kind=int if hints[f.name] in (int, int | None) else str,
            default=f.default,  # type: ignore[arg-type]  # not MISSING: every field has a default
            help=f.metadata["help"],
            lo=f.metadata["lo"],
            hi=f.metadata["hi"],
        )
        for f in dataclasses.fields(ServeOptions)
    )


def to_argv(options: ServeOptions) -> list[str]:
    """The flags that make ``parse_argv`` give back ``options`` (unset options left out)."""
    argv: list[str] = []
    for spec in option_specs():
        value = getattr(options, spec.name)
        if value is not None:
            argv += [spec.flag, str(value)]
    return argv


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing its usage and exiting: the program reports a bad
    argument as one ``llmtop: `` line, as every llmtop command does."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def parse_argv(argv: Sequence[str] | None) -> ServeOptions:
    """The engine program's command line (``--help`` prints the options and exits).

    Raises:
        ValueError: an unknown flag, or a value of the wrong type or out of range.
    """
    parser = _Parser(prog="llmtop serve")
    for spec in option_specs():
        parser.add_argument(
            spec.flag, dest=spec.name, type=spec.kind, default=spec.default, help=spec.help
        )
    return ServeOptions(**vars(parser.parse_args(argv)))


def program_argv(options: ServeOptions, python: str = sys.executable) -> list[str]:
    """The argv that runs the engine program with ``options`` in a fresh interpreter."""
    return [python, "-c", PROGRAM, *to_argv(options)]
