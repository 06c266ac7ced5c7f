"""Changing what is stored after the fact: deleting runs with every row that belongs to them."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from sqlite_utils import Database

from llmtop.core.errors import StorageError, UsageError
from llmtop.storage.schema import TABLES


@dataclass(frozen=True, slots=True)
class Deleted:
    """What a deletion removed: the run ids and the rows removed from each table."""

    run_ids: tuple[int, ...]
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


def _key(table: str) -> str:
    return "id" if table == "runs" else "run_id"


def delete_runs(db: Database, run_ids: list[int] | tuple[int, ...]) -> Deleted:
    """Delete runs and their rows from every table, all in one transaction.

    Children go first (``requests`` references ``runs`` and foreign keys may be on); a failure
    rolls everything back, so a run is either wholly there or wholly gone.

    Raises:
        UsageError: a run does not exist, or is still being recorded by a live process (its
            writer would go on adding rows that belong to nothing).
        StorageError: the database refused the deletion (read-only, locked, disk error).
    """
    ids = tuple(dict.fromkeys(int(i) for i in run_ids))
    if not ids:
        return Deleted(())
    marks = ", ".join("?" * len(ids))
    found = {
        r["id"]: r["status"]
        for r in db.query(f"select id, status from runs where id in ({marks})", list(ids))
    }
    missing = [i for i in ids if i not in found]
    if missing:
        raise UsageError(f"no run with id {missing[0]} in this database (see 'llmtop runs')")
    live = [i for i in ids if found[i] == "running"]
    if live:
        raise UsageError(
            f"run {live[0]} is still being recorded; stop it first (Ctrl-C in its terminal)"
        )
    counts: dict[str, int] = {}
    order = [t for t in TABLES if t != "runs"] + ["runs"]
    try:
        with db.conn:  # one transaction: commit at the end, roll back on any error
            for table in order:
                if not db[table].exists():
                    continue
                cur = db.conn.execute(
                    f"delete from {table} where {_key(table)} in ({marks})", list(ids)
                )
                counts[table] = cur.rowcount
    except sqlite3.Error as e:
        raise StorageError(f"cannot delete runs: {e}") from None
    return Deleted(ids, counts)
