"""``llmtop proxy``: stand between real clients and their model server, and time what they see.

The ready line on stdout is a contract with launchers (the dashboard's ``--proxy``, tests):
``llmtop proxy: listening on URL -> UPSTREAM (BACKEND), run #N``. Warnings are lines on stderr.
Ctrl-C or SIGTERM ends the run ``finished`` (exit 0); a second one quits at once.

The proxy runs on uvloop where it is installed (a dependency on Linux and macOS): at 64 streams
on this 2-core machine, the TTFT it adds went from +0.385 to +0.315 ms at p50 (bench/proxy.py,
same run). ``LLMTOP_PROXY_LOOP=asyncio`` runs it on asyncio's own loop instead.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections.abc import Callable
from typing import Any, TypeVar

import click

from llmtop.app.commands.common import db_option, db_path_of
from llmtop.app.commands.run_options import OneLineErrors
from llmtop.core.errors import SourceError
from llmtop.core.metrics import Slo
from llmtop.recorder.fd_room import make_room_for_sockets
from llmtop.recorder.proxy_run import (
    BACKENDS,
    ProxyPlan,
    ProxyResult,
    ProxyRun,
    ProxyStarted,
    check_backend,
    parse_listen,
    upstream_origin,
)
from llmtop.recorder.proxy_server import ProxyLimits
from llmtop.recorder.short_slice import request_short_slice

F = TypeVar("F", bound=Callable[..., Any])


def ready_line(started: ProxyStarted) -> str:
    return (
        f"llmtop proxy: listening on {started.url} -> {started.upstream} ({started.backend}), "
        f"run #{started.run_id}"
    )


@click.command(cls=OneLineErrors)
@click.option("--upstream", required=True, metavar="URL",
              help="The model server to relay to: http://HOST:PORT (Ollama, vLLM, llama.cpp, "
              "llmtop serve...).")  # fmt: skip
@click.option("--listen", default=None, metavar="HOST:PORT",
              help="Where clients connect. Default: 127.0.0.1:11434 (Ollama's port) when the "
              "upstream is an Ollama elsewhere, else a free port (the ready line says which).")  # fmt: skip
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="The upstream's own API, for its /metrics or /api/ps (default: asked of it).")  # fmt: skip
@db_option
@click.option("--store-prompts", is_flag=True,
              help="Keep each prompt (for replay with the same prompts); default: its length "
              "and a hash only.")  # fmt: skip
@click.option("--name", default="", help="A label for the run.")
@click.option("--slo-ttft-ms", type=click.FloatRange(min=0, min_open=True), default=None,
              help="TTFT objective, for goodput in reports and the dashboard.")  # fmt: skip
@click.option("--slo-tpot-ms", type=click.FloatRange(min=0, min_open=True), default=None,
              help="TPOT objective, for goodput in reports and the dashboard.")  # fmt: skip
@click.option("--max-body-bytes", type=click.IntRange(1024, 1 << 31), default=64 << 20,
              show_default=True, help="Largest request body; larger ones get 413 unread.")  # fmt: skip
@click.option("--idle-timeout", type=click.FloatRange(0.1, 86400), default=300.0,
              show_default=True, help="Seconds a client connection may stay silent.")  # fmt: skip
@click.option("--sample-hz", type=click.FloatRange(0.1, 100), default=1.0, show_default=True,
              help="Samples per second of the machine, GPUs and the server.")  # fmt: skip
@click.pass_context
def proxy(
    ctx: click.Context,
    upstream: str,
    listen: str | None,
    backend: str | None,
    db_path: str | None,
    store_prompts: bool,
    name: str,
    slo_ttft_ms: float | None,
    slo_tpot_ms: float | None,
    max_body_bytes: int,
    idle_timeout: float,
    sample_hz: float,
) -> None:
    """Relay real clients' requests to a model server unchanged, and time every generation.

    Every byte goes through as it came (chat, generate, completions, embeddings, models, tags,
    everything); each generation is timed token by token as 'llmtop record' times its own, into
    one run of kind 'observed' ('llmtop runs', 'report', 'export', 'compare' work on it).
    Prometheus histograms of what the clients saw: /llmtop/metrics on the proxy. API keys pass
    through and are never stored; prompts only with --store-prompts.

    \b
    Examples:
      llmtop proxy --upstream http://127.0.0.1:11500      # Ollama moved to 11500; clients keep 11434
      llmtop proxy --upstream http://127.0.0.1:8000 --listen 127.0.0.1:8001 --slo-ttft-ms 500
    """
    upstream_origin(upstream)  # a bad URL is one line before anything starts
    if listen is not None:
        parse_listen(listen)
    plan = ProxyPlan(
        upstream=upstream, backend=check_backend(backend), listen=listen,
        store_prompts=store_prompts, name=name, slo=Slo(ttft_ms=slo_ttft_ms, tpot_ms=slo_tpot_ms),
        limits=ProxyLimits(max_body_bytes=max_body_bytes, idle_timeout_s=idle_timeout),
        sample_hz=sample_hz,
    )  # fmt: skip
    run = ProxyRun(plan, db_path_of(ctx, db_path))
    make_room_for_sockets(0)  # its clients' connections, before its threads start
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        result, shown = runner.run(_serve(run))
    for warning in run.warnings[shown:]:
        click.echo(f"llmtop: warning: {warning}", err=True)
    if result.status == "failed":
        raise SourceError(result.error or "the proxy failed")
    click.echo(
        f"llmtop proxy: stopped; run #{result.run_id} finished: {result.ok:,} ok, "
        f"{result.errors:,} errors, {result.cancelled:,} cancelled"
        + (f", {result.untimed:,} relayed untimed" if result.untimed else "")
    )


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed and not turned off (``LLMTOP_PROXY_LOOP=asyncio``);
    ``None``: asyncio's own."""
    if os.environ.get("LLMTOP_PROXY_LOOP", "").lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _serve(run: ProxyRun) -> tuple[ProxyResult, int]:
    """The run until Ctrl-C or SIGTERM; also how many of its warnings were printed."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    shown = 0

    def on_signal() -> None:
        if stop.is_set():  # a second Ctrl-C: quit now; the run is marked interrupted later
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            signal.raise_signal(signal.SIGINT)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)

    def ready(started: ProxyStarted) -> None:
        nonlocal shown
        for warning in started.warnings:
            click.echo(f"llmtop: warning: {warning}", err=True)
        shown = len(started.warnings)
        click.echo(ready_line(started))
        # Everything built so far (modules, the run's state) lives as long as the process: keep
        # it out of the collector's full passes, which otherwise stall the relay for tens of ms
        # at a time (40 ms here, measured) and land in the TTFT of every stream in flight.
        gc.freeze()
        request_short_slice()  # the relay stamps tokens: first on its core when bytes arrive

    try:
        return await run.run(stop, ready), shown
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
