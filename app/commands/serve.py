"""``llmtop serve``: the in-repo engine behind Ollama's and OpenAI's APIs, with /metrics.

This command checks its options, then replaces the process (exec: same pid, same stdout) with a
fresh interpreter that imports torch first and runs ``llmtop.engine.program``: the engine
prefills about 2x faster there than inside this CLI's interpreter (see engine/program.py).
The ready line on stdout is a contract with launchers (collectors/engine.py):
``llmtop serve: listening on http://HOST:PORT (model NAME)``.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import click

from llmtop.core.errors import SourceError

ENGINE_MAIN = (
    "import torch, sys; from llmtop.engine.program import main; sys.exit(main(sys.argv[1:]))"
)
"""torch before anything else, even before the llmtop package (faster prefill, measured)."""


@click.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Anything but loopback is reachable from other machines.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=11435,
    show_default=True,
    help="TCP port; 0 picks a free one (the ready line says which).",
)
@click.option(
    "--model",
    default="smollm2",
    show_default=True,
    help="'smollm2' (bundled SmolLM2-135M-Instruct) or a Llama-architecture FILE.gguf.",
)
@click.option(
    "--max-batch",
    type=click.IntRange(1, 64),
    default=8,
    show_default=True,
    help="Sequences decoded together in one batched step; more requests wait in a queue.",
)
@click.option(
    "--ctx",
    "context_length",
    type=click.IntRange(16, 131072),
    default=None,
    help="Tokens per sequence, prompt and output together (default: 4096 as Ollama, or the "
    "model's own context if shorter).",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 256),
    default=None,
    help="torch CPU threads for the engine (default: one per core).",
)
@click.option(
    "--max-queue",
    type=click.IntRange(0, 100_000),
    default=64,
    show_default=True,
    help="Requests waiting for a batch slot; more are refused at once with 503 and a "
    "Retry-After header (seconds) instead of queueing without bound.",
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(1024, 1 << 30),
    default=1 << 20,
    show_default=True,
    help="Largest request body; a larger one gets 413, refused before it is read.",
)
@click.option(
    "--idle-timeout",
    type=click.IntRange(1, 3600),
    default=30,
    show_default=True,
    help="Seconds a connection may take to send a complete request (from when it opens, and "
    "between requests); idle and slowloris connections are closed after it.",
)
def serve(
    host: str,
    port: int,
    model: str,
    max_batch: int,
    context_length: int | None,
    threads: int | None,
    max_queue: int,
    max_body_bytes: int,
    idle_timeout: int,
) -> None:
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
            "pip install 'llmtop[engine]'"
        )
    args = ["--host", host, "--port", str(port), "--model", model, "--max-batch", str(max_batch)]
    if context_length is not None:
        args += ["--ctx", str(context_length)]
    if threads is not None:
        args += ["--threads", str(threads)]
    args += ["--max-queue", str(max_queue), "--max-body-bytes", str(max_body_bytes)]
    args += ["--idle-timeout", str(idle_timeout)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-c", ENGINE_MAIN, *args])
