"""The dashboard's proxy flags (``llmtop --proxy --upstream URL``), apart from ``llmtop proxy``
itself so that the group's options do not load the proxy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from llmtop.core.errors import UsageError

F = TypeVar("F", bound=Callable[..., Any])


def dashboard_options(f: F) -> F:
    """``llmtop --proxy --upstream URL [--listen] [--store-prompts] [--slo-*-ms]``: the
    dashboard with a proxy of its own (app/proxy_child.py)."""
    for option in reversed([
        click.option("--proxy", "proxy_mode", is_flag=True,
                     help="Run 'llmtop proxy' in front of --upstream and watch its clients."),
        click.option("--upstream", default=None, metavar="URL",
                     help="With --proxy: the model server the proxy relays to."),
        click.option("--listen", default=None, metavar="HOST:PORT",
                     help="With --proxy: where clients connect (see 'llmtop proxy --help')."),
        click.option("--store-prompts", is_flag=True, default=None,
                     help="With --proxy: keep prompts (for replay)."),
        click.option("--slo-ttft-ms", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="With --proxy: TTFT objective for goodput."),
        click.option("--slo-tpot-ms", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="With --proxy: TPOT objective for goodput."),
    ]):  # fmt: skip
        f = option(f)
    return f


def dashboard_proxy_args(flags: dict[str, Any]) -> list[str]:
    """The ``llmtop proxy`` arguments the dashboard's proxy flags ask for (``[]``: no proxy).

    Raises:
        UsageError: proxy flags without ``--proxy``, or ``--proxy`` without ``--upstream``.
    """
    given = {k: flags.get(k) for k in ("upstream", "listen", "store_prompts", "slo_ttft_ms",
                                       "slo_tpot_ms")}  # fmt: skip
    if not flags.get("proxy_mode"):
        extra = [k for k, v in given.items() if v]
        if extra:
            raise UsageError(f"--{extra[0].replace('_', '-')} goes with --proxy")
        return []
    if not given["upstream"]:
        raise UsageError("--proxy needs --upstream URL: the model server to relay to")
    from llmtop.recorder.proxy_run import parse_listen, upstream_origin

    upstream_origin(str(given["upstream"]))
    args = ["--upstream", str(given["upstream"])]
    if given["listen"]:
        parse_listen(str(given["listen"]))
        args += ["--listen", str(given["listen"])]
    if given["store_prompts"]:
        args.append("--store-prompts")
    for key in ("slo_ttft_ms", "slo_tpot_ms"):
        if given[key] is not None:
            args += [f"--{key.replace('_', '-')}", f"{given[key]:g}"]
    return args
