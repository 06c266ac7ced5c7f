"""Options and helpers shared by several subcommands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from llmtop.core.errors import UsageError
from llmtop.storage import queries
from llmtop.storage.db import Database, open_database

F = TypeVar("F", bound=Callable[..., Any])


def db_option(f: F) -> F:
    """``--db PATH`` on a subcommand; falls back to the group's ``--db`` and ``LLMTOP_DB``."""
    return click.option(
        "--db",
        "db_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="SQLite file (default: the group's --db, env LLMTOP_DB, or the user data dir).",
    )(f)


def db_path_of(ctx: click.Context, db_path: str | None) -> str | None:
    if db_path:
        return db_path
    root = ctx.find_root()
    return (root.obj or {}).get("db_path")


def open_db(ctx: click.Context, db_path: str | None) -> Database:
    return open_database(db_path_of(ctx, db_path))


def resolve_run_ids(
    db: Database, run_ids: tuple[int, ...], last: bool, all_runs: bool
) -> list[int] | None:
    """The runs a command acts on: ``--run`` ids, ``--all`` (``None``), or the last run (default)."""
    chosen = sum([bool(run_ids), last, all_runs])
    if chosen > 1:
        raise UsageError("choose one of --run, --last and --all")
    if all_runs:
        return None
    if run_ids:
        missing = [r for r in run_ids if queries.get_run(db, r) is None]
        if missing:
            raise UsageError(f"no run with id {missing[0]} in this database (see 'llmtop runs')")
        return list(run_ids)
    last_id = queries.last_run_id(db)
    if last_id is None:
        raise UsageError("no runs in this database yet: record one with 'llmtop record'")
    return [last_id]
