"""``llmtop export``: a table's rows as CSV or JSON, on stdout or in a file, streamed."""

from __future__ import annotations

import sys
from contextlib import nullcontext

import click

from llmtop.app.commands.common import db_option, open_db, resolve_run_ids
from llmtop.core.errors import UsageError
from llmtop.storage.export import EXPORT_TABLES
from llmtop.storage.export import export as export_rows


@click.command()
@db_option
@click.option("--csv", "fmt", flag_value="csv", help="Write CSV.")
@click.option("--json", "fmt", flag_value="json", help="Write a JSON array of objects.")
@click.option("--run", "run_ids", type=int, multiple=True, help="Export this run (repeatable).")
@click.option("--last", is_flag=True, help="Export the last run (the default).")
@click.option("--all", "all_runs", is_flag=True, help="Export every run.")
@click.option(
    "--table",
    type=click.Choice(EXPORT_TABLES),
    default="requests",
    show_default=True,
    help="Which table to export.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write to this file instead of stdout.",
)
@click.pass_context
def export(
    ctx: click.Context,
    db_path: str | None,
    fmt: str | None,
    run_ids: tuple[int, ...],
    last: bool,
    all_runs: bool,
    table: str,
    output: str | None,
) -> None:
    """Export the rows of one table for the last run, some runs, or all of them."""
    if fmt is None:
        raise UsageError("choose a format: --csv or --json")
    db = open_db(ctx, db_path)
    ids = resolve_run_ids(db, run_ids, last, all_runs)
    try:
        target = (
            open(output, "w", newline="", encoding="utf-8") if output else nullcontext(sys.stdout)
        )
    except OSError as e:
        raise UsageError(f"cannot write {output}: {e.strerror}") from None
    with target as out:
        n = export_rows(db, out, table=table, run_ids=ids, fmt=fmt)
    if output:
        click.echo(f"wrote {n:,} {table} rows to {output}", err=True)
