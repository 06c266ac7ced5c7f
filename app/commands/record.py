"""``llmtop record``: run a scenario against a server headless, store it, print the summary.

Exit codes: 0 the run finished; 1 the backend was unreachable or lacked the model, every
request failed, or the database failed; 2 bad arguments or a bad scenario file; 130 stopped
with Ctrl-C (the run is marked cancelled, what arrived is kept). A second Ctrl-C quits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from typing import Any

import click
from rich.console import Console

from llmtop.app.commands.common import db_option, db_path_of
from llmtop.app.commands.consoles import cli_console
from llmtop.app.commands.record_view import print_summary, summary_json
from llmtop.app.commands.run_options import (
    OneLineErrors,
    backend_options,
    replay_options,
    run_options,
)
from llmtop.core.errors import LlmtopError, SourceError, StorageError, UsageError
from llmtop.recorder.flags import RunFlags, plan_from_flags, plan_warnings
from llmtop.recorder.loop_probe import new_event_loop
from llmtop.recorder.recording import Recording, RecordResult
from llmtop.storage import queries
from llmtop.storage.db import open_readonly
from llmtop.storage.queries import RunSummary


class Interrupted(LlmtopError):
    """The user stopped the run; it is recorded as cancelled."""

    exit_code = 130


@click.command(cls=OneLineErrors)
@backend_options
@run_options
@replay_options
@db_option
@click.option("--quiet", "-q", is_flag=True, help="No progress and no summary table.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.pass_context
def record(ctx: click.Context, db_path: str | None, quiet: bool, as_json: bool, **kw: Any) -> None:
    """Run a scenario against a server headless, and print a summary.

    \b
    Examples:
      llmtop record --model llama3.2:1b                      # 10 x "What is AI?", sequential
      llmtop record --scenario basic --requests 100
      llmtop record --scenario rate-sweep --backend openai --url http://127.0.0.1:8000/v1
      llmtop record --prompt "Write a haiku" --concurrency 8 --duration 60 --json
      llmtop record --replay 12 --replay-speed 2 --backend openai --url http://host:8000/v1
      llmtop record --trace mooncake.jsonl --model llama3.2:1b
    """
    path = db_path_of(ctx, db_path)
    plan = plan_from_flags(RunFlags.from_options(kw), path)
    show_progress = not quiet and sys.stderr.isatty()
    err = cli_console(stderr=True)
    for warning in plan_warnings(plan):
        err.print(f"llmtop: warning: {warning}", markup=False, highlight=False, soft_wrap=True)

    def on_status(text: str, *, notice: bool = False) -> None:
        # Progress ("starting the engine (4 s)") is the progress view's to show, on a terminal;
        # a notice ("no Ollama ...: measuring the bundled engine") is printed wherever stderr goes.
        if notice:
            err.print(f"llmtop: {text}", markup=False, highlight=False, soft_wrap=True)

    recording = Recording(plan, path, on_status=on_status)
    with asyncio.Runner(loop_factory=new_event_loop) as runner:  # its lag is measured exactly
        result = runner.run(_record(recording, show_progress, err))
    # Quiet and not --json, nothing shows ITL: skip reading every token back (~2 us a token).
    summary, examples = _summary(result, with_itl=as_json or not quiet)
    if result.status == "finished" and summary is not None and summary.bottleneck:
        err.print(f"llmtop: {summary.bottleneck}", markup=False, highlight=False, soft_wrap=True)
    if as_json:
        click.echo(json.dumps(summary_json(summary, result), indent=2, default=str))
    elif summary is not None and not quiet and summary.overall.n + summary.overall.warmup > 0:
        print_summary(cli_console(), summary, result, examples)
    _exit_for(result)


async def _record(recording: Recording, show_progress: bool, err: Console) -> RecordResult:
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if recording.stop_requested:
            # Second Ctrl-C: stop waiting. The run row stays 'running' and is marked
            # 'interrupted' the next time the database is opened.
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            signal.raise_signal(signal.SIGINT)
            return
        if show_progress:
            err.print("[yellow]stopping: requests in flight are cancelled; Ctrl-C again to quit")
        recording.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)
    view = None
    if show_progress:
        from llmtop.app.commands.record_progress import ProgressView

        view = asyncio.create_task(ProgressView(recording, err).run())
    try:
        return await recording.run()
    finally:
        if view is not None:
            view.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await view


def _summary(
    result: RecordResult, *, with_itl: bool = True
) -> tuple[RunSummary | None, dict[str, str]]:
    """The run's statistics from the database, and one error message per error kind."""
    if result.run_id is None:
        return None, {}
    try:
        db = open_readonly(result.db_path)
        try:
            examples = {
                r["error_kind"]: r["error"]
                for r in db.query(
                    "select error_kind, min(error) as error from requests where run_id = ? "
                    "and status = 'error' and warmup = 0 group by error_kind",
                    [result.run_id],
                )
            }
            return queries.run_summary(db, result.run_id, with_itl=with_itl), examples
        finally:
            db.close()
    except StorageError:
        return None, {}


def _exit_for(result: RecordResult) -> None:
    if result.status == "finished":
        return
    run = f"run {result.run_id}" if result.run_id is not None else "no run"
    if result.status == "cancelled":
        raise Interrupted(f"interrupted: {run} marked cancelled; everything received is kept")
    message = result.error or "the run failed"
    if result.failure == "usage":
        raise UsageError(message)
    if result.failure == "storage":
        raise StorageError(message)
    if result.failure == "requests":
        raise SourceError(f"{message} ({run} marked failed)")
    raise SourceError(message)
