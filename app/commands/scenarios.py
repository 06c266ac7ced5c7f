"""``llmtop scenarios``: the built-in scenarios and what they do; one in detail; its TOML."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from llmtop.app.commands.consoles import cli_console
from llmtop.app.commands.run_options import OneLineErrors
from llmtop.core.errors import UsageError
from llmtop.scenarios.loader import builtin_names, builtin_text, load_scenario
from llmtop.scenarios.model import Scenario


def _as_dict(s: Scenario) -> dict[str, Any]:
    p = s.params()
    p["steps"] = [{**step, "describe": st.describe()} for step, st in zip(p["steps"], s.steps, strict=True)]  # fmt: skip
    p["sample_hz"] = s.sample_hz
    return p


def _detail(console: Console, s: Scenario) -> None:
    console.print(Text(f"{s.name}", style="bold") + Text(f"  ({s.source})", style="dim"))
    if s.description:
        console.print(s.description)
    per_worker = " (one per worker)" if s.warmup is None else ""
    facts = [f"warm-up: {s.warmup_requests} request(s){per_worker}"]
    if s.slo.is_set:
        slo = [f"{n} <= {v:g} ms" for n, v in (("TTFT", s.slo.ttft_ms), ("TPOT", s.slo.tpot_ms),
                                               ("E2E", s.slo.e2e_ms)) if v is not None]  # fmt: skip
        facts.append("SLOs: " + " and ".join(slo))
    if s.stop_below_goodput is not None:
        facts.append(f"stops once a step's goodput < {s.stop_below_goodput:.0%}")
    if s.sample_hz:
        facts.append(f"samples resources at {s.sample_hz:g} Hz")
    console.print(Text("; ".join(facts), style="dim"))
    steps = Table(box=None, header_style="bold", title_justify="left")
    steps.add_column("step")
    steps.add_column("what it sends")
    for st in s.steps:
        steps.add_row(st.name, st.describe())
    console.print(steps)
    prompts = Table(box=None, header_style="bold")
    prompts.add_column("prompt")
    prompts.add_column("chars", justify="right")
    prompts.add_column("text")
    seen: dict[str, Any] = {p.label: p for p in s.prompts}
    for st in s.steps:
        for p in st.prompts:
            seen.setdefault(p.label, p)
    for p in seen.values():
        text = f"generated, about {p.tokens} tokens" if p.tokens else p.text
        prompts.add_row(p.label, str(len(p.text)), text if len(text) <= 70 else text[:67] + "...")
    console.print(prompts)


@click.command(cls=OneLineErrors)
@click.argument("scenario", required=False, metavar="[NAME|FILE.toml]")
@click.option(
    "--toml", "as_toml", is_flag=True, help="Print the built-in's TOML (to copy and edit)."
)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def scenarios(scenario: str | None, as_toml: bool, as_json: bool) -> None:
    """The built-in scenarios and what they do; with a NAME or FILE, that one in detail.

    \b
    Examples:
      llmtop scenarios                          # the list
      llmtop scenarios rate-sweep               # its steps, prompts and SLOs
      llmtop scenarios basic --toml > mine.toml # start your own from a built-in
      llmtop scenarios mine.toml                # check a file: errors name the line
    """
    console = cli_console()
    if as_toml:
        if scenario is None:
            raise UsageError("--toml needs a built-in NAME (see 'llmtop scenarios')")
        if scenario not in builtin_names():
            raise UsageError(f"no built-in scenario {scenario!r}; built-ins: {', '.join(builtin_names())}")  # fmt: skip
        click.echo(builtin_text(scenario), nl=False)
        return
    if scenario is not None:
        s = load_scenario(scenario)
        if as_json:
            click.echo(json.dumps(_as_dict(s), indent=2))
        else:
            _detail(console, s)
        return
    loaded = [load_scenario(name) for name in builtin_names()]
    if as_json:
        click.echo(json.dumps([_as_dict(s) for s in loaded], indent=2))
        return
    table = Table(box=None, header_style="bold")
    table.add_column("scenario")
    table.add_column("steps")
    table.add_column("what it does")
    for s in loaded:
        table.add_row(s.name, ", ".join(st.name for st in s.steps), s.description)
    console.print(table)
    console.print(
        Text(
            "llmtop record --scenario NAME runs one; llmtop scenarios NAME shows its steps; "
            "--scenario FILE.toml runs your own.",
            style="dim",
        )
    )
