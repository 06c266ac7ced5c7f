"""``llmtop runs``: the history of runs, filtered, as a table or JSON; and deleting runs."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import click
from rich.console import JustifyMethod
from rich.table import Table
from rich.text import Text

from llmtop.app.commands.common import db_option, open_db
from llmtop.app.commands.consoles import table_console
from llmtop.core import fmt
from llmtop.core.errors import UsageError
from llmtop.core.fmt import local_time
from llmtop.storage import queries
from llmtop.storage.db import Database
from llmtop.storage.maintenance import delete_runs
from llmtop.storage.queries import RunRow

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "sec": "seconds", "m": "minutes", "min": "minutes", "h": "hours",
          "d": "days", "w": "weeks"}  # fmt: skip


STATUS_STYLE = {"finished": "green", "running": "yellow", "cancelled": "yellow",
                "interrupted": "red", "failed": "red"}  # fmt: skip


NAME_WIDTH = 24
DROP_ORDER = ("scenario", "backend", "model", "out tok/s", "status", "decode tok/s")
"""Columns left out, first to last, when the terminal is too narrow for them all."""


def fitting_columns(
    names: Sequence[str], cells: Sequence[Sequence[object]], width: int
) -> set[int]:
    """Indexes of the columns that fit ``width``, dropping ``DROP_ORDER`` first.

    A column needs its widest value (names capped at ``NAME_WIDTH``) or its header, whichever
    is wider, plus two columns of padding; what is shown then never wraps.
    """
    need = []
    for i, name in enumerate(names):
        value = max((len(str(row[i])) for row in cells), default=0)
        need.append(max(min(value, NAME_WIDTH), len(name)) + 2)
    shown = set(range(len(names)))
    for name in DROP_ORDER:
        if sum(need[i] for i in shown) <= width:
            break
        shown.discard(names.index(name))
    return shown


def parse_since(text: str, now: datetime | None = None) -> str:
    """A start-time bound as the UTC ISO text runs are stored with.

    Accepts a date or time in ISO form (``2026-05-01``, ``2026-05-01 14:30``, with or without a
    zone; no zone means local time), ``today``, ``yesterday``, or an age: ``30m``, ``2h``, ``7d``.

    Raises:
        UsageError: the text is none of those.
    """
    now = now if now is not None else datetime.now(UTC)
    local_now = now.astimezone()
    word = text.strip().lower()
    if word in ("today", "yesterday"):
        midnight = local_now.replace(hour=0, minute=0, second=0, microsecond=0)
        moment = midnight - timedelta(days=1) if word == "yesterday" else midnight
    elif m := _RELATIVE.match(text):
        moment = now - timedelta(**{_UNITS[m.group(2).lower()]: float(m.group(1))})
    else:
        try:
            moment = datetime.fromisoformat(text.strip())
        except ValueError:
            raise UsageError(
                f"--since {text!r}: give a date or time (2026-05-01, '2026-05-01 14:30'), "
                "today, yesterday, or an age such as 30m, 2h, 7d"
            ) from None
        if moment.tzinfo is None:
            moment = moment.astimezone()  # a bare date or time is the user's local time
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def describe(r: RunRow) -> str:
    """One line that tells a user which run they are about to lose."""
    parts = [p for p in (r.scenario, r.backend, fmt.model_name(r.model)) if p]
    return (
        f"run {r.id}" + (f" {r.name!r}" if r.name else "")
        + (f" ({', '.join(parts)})" if parts else "")
        + f", {r.n_requests} requests, started {r.started_at[:19].replace('T', ' ')} UTC"
    )  # fmt: skip


def _delete(db: Database, ids: tuple[int, ...], yes: bool, as_json: bool) -> None:
    rows = []
    for run_id in dict.fromkeys(ids):
        row = queries.get_run(db, run_id)
        if row is None:
            raise UsageError(f"no run with id {run_id} in this database (see 'llmtop runs')")
        rows.append(row)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError("deleting needs a yes: run it on a terminal to be asked, or add --yes")
        for r in rows:
            click.echo(describe(r))
        what = (
            f"run {rows[0].id} and all its data"
            if len(rows) == 1
            else (f"these {len(rows)} runs and all their data")
        )
        if not click.confirm(f"Delete {what}?", default=False):
            click.echo("nothing deleted")
            return
    result = delete_runs(db, [r.id for r in rows])
    if as_json:
        click.echo(json.dumps({"deleted": list(result.run_ids), "rows": result.rows}, indent=2))
        return
    detail = ", ".join(f"{n:,} {t}" for t, n in result.rows.items() if n and t != "runs")
    ids_text = ", ".join(str(i) for i in result.run_ids)
    click.echo(
        f"deleted run{'s' if len(rows) > 1 else ''} {ids_text}" + (f" ({detail})" if detail else "")
    )


@click.command()
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Show the newest N runs.")
@click.option("--model", default=None, metavar="NAME", help="Only runs of this model (exact name).")
@click.option(
    "--backend",
    default=None,
    metavar="NAME",
    help="Only runs of this backend (ollama, openai, engine).",
)
@click.option("--scenario", default=None, metavar="NAME", help="Only runs of this scenario.")
@click.option("--since", default=None, metavar="WHEN",
              help="Only runs started since: a date or time (local unless it has a zone), "
                   "today, yesterday, or an age: 30m, 2h, 7d.")  # fmt: skip
@click.option("--delete", "delete_ids", type=int, multiple=True, metavar="ID",
              help="Delete this run and all its data (repeatable); asks first on a terminal.")  # fmt: skip
@click.option("--yes", "-y", is_flag=True, help="Delete without asking.")
@click.option("--all", "show_all", is_flag=True,
              help="Also the runs that failed before sending a request (hidden by default).")  # fmt: skip
@click.pass_context
def runs(
    ctx: click.Context,
    db_path: str | None,
    as_json: bool,
    limit: int | None,
    model: str | None,
    backend: str | None,
    scenario: str | None,
    since: str | None,
    delete_ids: tuple[int, ...],
    yes: bool,
    show_all: bool,
) -> None:
    """The runs in the database, newest first, with their key numbers; or delete runs.

    \b
    Examples:
      llmtop runs --model llama3.1:8b --since 7d
      llmtop runs --scenario concurrency --json
      llmtop runs --delete 4               # asks first; --yes to skip the question
    """
    filters = {"model": model, "backend": backend, "scenario": scenario, "since": since}
    if delete_ids and (any(v is not None for v in filters.values()) or limit):
        raise UsageError("--delete takes run ids only; list with filters first, then delete")
    if yes and not delete_ids:
        raise UsageError("--yes only goes with --delete ID")
    db = open_db(ctx, db_path)
    if delete_ids:
        _delete(db, delete_ids, yes, as_json)
        return
    since_iso = parse_since(since) if since is not None else None
    rows = queries.list_runs(db, model=model, backend=backend, scenario=scenario,
                             since=since_iso, limit=limit if show_all else None)  # fmt: skip
    empty = 0
    if not show_all:  # a server that was down: the attempt is kept, but it is not a run to read
        kept = [r for r in rows if not _empty_failure(r)]
        empty, rows = len(rows) - len(kept), kept[:limit] if limit else kept
    note = (
        f"({empty} run{'s' if empty != 1 else ''} that failed before a request not shown; "
        "--all shows them)"
    )
    summaries = {r.id: queries.run_summary(db, r.id, with_itl=False) for r in rows}
    if as_json:
        out = [s.as_dict() for r in rows if (s := summaries[r.id]) is not None]
        click.echo(json.dumps(out, indent=2))
        return
    if not rows:
        if any(v is not None for v in filters.values()):
            given = ", ".join(f"--{k} {v}" for k, v in filters.items() if v is not None)
            click.echo(f"no runs match {given}", err=True)
        elif not empty:
            click.echo("no runs yet: record one with 'llmtop record'", err=True)
        if empty:
            click.echo(note, err=True)
        return
    cells: list[list[str | Text]] = []
    for r in rows:
        s = summaries[r.id]
        o = s.overall if s else None
        cells.append([
            str(r.id), local_time(r.started_at), r.name,
            Text(r.status, style=STATUS_STYLE.get(r.status, "")), r.backend, fmt.model_name(r.model), r.scenario,
            str(r.n_requests), Text(str(r.n_errors), style="red" if r.n_errors else ""),
            fmt.num(o.ttft_ms.p50 if o else None), fmt.num(o.e2e_ms.p95 if o else None),
            fmt.num(o.decode_tps.mean if o else None), fmt.num(o.out_tok_per_s if o else None),
        ])  # fmt: skip
    columns: list[tuple[str, JustifyMethod]] = [
        ("id", "right"), ("started", "left"), ("name", "left"), ("status", "left"),
        ("backend", "left"), ("model", "left"), ("scenario", "left"), ("reqs", "right"),
        ("errs", "right"), ("TTFT p50 ms", "right"), ("E2E p95 ms", "right"),
        ("decode tok/s", "right"), ("out tok/s", "right"),
    ]  # fmt: skip
    console = table_console()
    shown = fitting_columns([c for c, _ in columns], cells, console.width)
    table = Table(box=None, header_style="bold")
    for i, (col, justify) in enumerate(columns):
        if i in shown:
            table.add_column(col, justify=justify, no_wrap=True, overflow="ellipsis",
                             max_width=NAME_WIDTH)  # fmt: skip
    cells = [[c for i, c in enumerate(row) if i in shown] for row in cells]
    for row in cells:  # names are text: "[x]" is not markup
        table.add_row(*(Text(c) if isinstance(c, str) else c for c in row))
    console.print(table)
    hidden = [c for i, (c, _) in enumerate(columns) if i not in shown]
    if hidden:
        click.echo(f"({', '.join(hidden)} left out to fit; widen the terminal or use --json)",
                   err=True)  # fmt: skip
    if empty:
        click.echo(note, err=True)


def _empty_failure(r: queries.RunRow) -> bool:
    """A run that failed before its first request (unreachable server, unknown model)."""
    return r.status == "failed" and r.n_requests == 0
