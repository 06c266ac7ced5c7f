"""``llmtop runs``: the history of runs in the database, as a table or JSON."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from llmtop.app.commands.common import db_option, fmt_num, open_db
from llmtop.storage import queries


@click.command()
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Show the newest N runs.")
@click.pass_context
def runs(ctx: click.Context, db_path: str | None, as_json: bool, limit: int | None) -> None:
    """The runs in the database, newest first, with their key numbers."""
    db = open_db(ctx, db_path)
    rows = queries.list_runs(db, limit=limit)
    summaries = {r.id: queries.run_summary(db, r.id, with_itl=False) for r in rows}
    if as_json:
        out = []
        for r in rows:
            s = summaries[r.id]
            o = s.overall if s else None
            out.append(
                {
                    "id": r.id,
                    "name": r.name,
                    "started_at": r.started_at,
                    "ended_at": r.ended_at,
                    "status": r.status,
                    "scenario": r.scenario,
                    "backend": r.backend,
                    "base_url": r.base_url,
                    "model": r.model,
                    "requests": r.n_requests,
                    "errors": r.n_errors,
                    "ttft_ms_p50": o.ttft_ms.p50 if o else None,
                    "e2e_ms_p95": o.e2e_ms.p95 if o else None,
                    "decode_tps_mean": o.decode_tps.mean if o else None,
                    "out_tok_per_s": o.out_tok_per_s if o else None,
                }
            )
        click.echo(json.dumps(out, indent=2))
        return
    if not rows:
        click.echo("no runs yet: record one with 'llmtop record'", err=True)
        return
    table = Table(box=None, header_style="bold")
    for col, justify in [
        ("id", "right"), ("started", "left"), ("name", "left"), ("status", "left"),
        ("backend", "left"), ("model", "left"), ("scenario", "left"), ("reqs", "right"),
        ("errs", "right"), ("TTFT p50 ms", "right"), ("E2E p95 ms", "right"),
        ("decode tok/s", "right"), ("out tok/s", "right"),
    ]:  # fmt: skip
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        s = summaries[r.id]
        o = s.overall if s else None
        table.add_row(
            str(r.id),
            r.started_at[:19].replace("T", " "),
            r.name,
            r.status,
            r.backend,
            r.model,
            r.scenario,
            str(r.n_requests),
            str(r.n_errors),
            fmt_num(o.ttft_ms.p50 if o else None),
            fmt_num(o.e2e_ms.p95 if o else None),
            fmt_num(o.decode_tps.mean if o else None),
            fmt_num(o.out_tok_per_s if o else None),
        )
    Console().print(table)
