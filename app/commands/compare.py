"""``llmtop compare A B [C...]``: runs side by side, each metric's change and whether it matters."""

from __future__ import annotations

import json

import click

from llmtop.app.commands.common import db_option, db_path_of
from llmtop.app.commands.consoles import table_console
from llmtop.core.errors import UsageError
from llmtop.storage.db import open_readonly


@click.command()
@click.argument("run_ids", metavar="A B [C...]", type=int, nargs=-1, required=True)
@db_option
@click.option(
    "--step",
    default=None,
    metavar="NAME",
    help="Compare this step of each run instead of whole runs.",
)
@click.option("--by-step", is_flag=True, help="One comparison per step the runs share.")
@click.option(
    "--threshold",
    type=click.FloatRange(min=0, max=100),
    metavar="PCT",
    default=5.0,
    show_default=True,
    help="Changes smaller than this many percent count as noise.",
)
@click.option("--markdown", "as_markdown", is_flag=True, help="Print Markdown tables.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@click.pass_context
def compare(
    ctx: click.Context,
    run_ids: tuple[int, ...],
    db_path: str | None,
    step: str | None,
    by_step: bool,
    threshold: float,
    as_markdown: bool,
    as_json: bool,
) -> None:
    """Compare runs A B [C...] metric by metric against the first (A).

    Each change is marked better or worse (lower is better for latencies, higher for
    throughput), "not significant" when a 95 % bootstrap interval of the difference, from the
    runs' stored per-request values, spans zero, or "same" when it is under --threshold.

    \b
    Examples:
      llmtop compare 3 5                 # run 5 against run 3
      llmtop compare 3 5 7 --by-step     # each shared step; runs 5 and 7 against 3
      llmtop compare 3 5 --markdown      # a table for a README
    """
    if as_markdown and as_json:
        raise UsageError("choose one of --markdown and --json")
    if step is not None and by_step:
        raise UsageError("choose one of --step and --by-step")
    if len(run_ids) < 2:
        raise UsageError("compare needs at least two runs: llmtop compare A B [C...]")
    if len(set(run_ids)) < len(run_ids):
        raise UsageError("each run can be compared once; the ids repeat")
    from llmtop.app.report.compare import load_comparison, shared_steps
    from llmtop.app.report.compare_view import (
        comparison_json,
        comparison_markdown,
        comparison_renderables,
    )

    db = open_readonly(db_path_of(ctx, db_path))
    try:
        steps: list[str | None] = [step]
        if by_step:
            shared = shared_steps(db, run_ids)
            if not shared:
                raise UsageError("the runs share no step names; compare whole runs instead")
            steps = list(shared)
        comparisons = [
            load_comparison(db, run_ids, step=s, threshold=threshold / 100) for s in steps
        ]
    finally:
        db.close()
    if as_json:
        click.echo(json.dumps(comparison_json(comparisons), indent=2, default=str))
    elif as_markdown:
        click.echo(comparison_markdown(comparisons), nl=False)
    else:
        console = table_console()
        for item in comparison_renderables(comparisons):
            console.print(item)
