"""Export a table as CSV or JSON, streamed row by row (a million rows in bounded memory).

Times in the tables are ``perf_counter_ns`` readings, exact between each other but with no
reference point; every table that has them gets a ``t_unix_s`` column too, the same moment on
the wall clock (the run's ``started_at`` plus the offset from its ``t0_ns``), so rows can be
placed in time and joined with other tools' logs.

CSV text cells that a spreadsheet would run as a formula (starting with ``=``, ``+``, ``-``, ``@``,
tab or CR) get a leading ``'``; the csv module quotes commas, quotes and newlines, so awkward text
round-trips through ``csv.reader``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, TextIO

from sqlite_utils import Database

EXPORT_TABLES: tuple[str, ...] = (
    "runs", "requests", "tokens", "samples", "gpu_samples", "server_samples", "servers",
)  # fmt: skip
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_ORDER = {
    "runs": "id",
    "requests": "run_id, id",
    "tokens": "run_id, request_id, idx",
    "samples": "run_id, t_ns",
    "gpu_samples": "run_id, t_ns, gpu",
    "server_samples": "run_id, t_ns, source, key",
    "servers": "run_id, t_ns",
}


_CLOCK = {"requests": "t_start_ns", "tokens": "t_ns", "samples": "t_ns", "gpu_samples": "t_ns"}
"""The perf_counter column of each table that gets a ``t_unix_s`` beside it."""


def _run_clocks(db: Database) -> dict[int, tuple[float, int]]:
    """run id -> (its start as Unix seconds, its ``t0_ns``), for runs that have both."""
    out = {}
    for run_id, started_at, t0_ns in db.conn.execute("select id, started_at, t0_ns from runs"):
        if started_at and t0_ns is not None:
            try:
                out[run_id] = (datetime.fromisoformat(started_at).timestamp(), t0_ns)
            except ValueError:
                continue
    return out


def neutralize(value: Any) -> Any:
    """Defuse a text cell a spreadsheet would evaluate; other values pass unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def iter_rows(
    db: Database, table: str, run_ids: Sequence[int] | None
) -> tuple[list[str], Iterator[tuple[Any, ...]]]:
    """Column names and a lazy cursor over ``table``'s rows for ``run_ids`` (``None``: all)."""
    if table not in EXPORT_TABLES:
        raise ValueError(f"unknown table {table!r}; choose one of {', '.join(EXPORT_TABLES)}")
    key = "id" if table == "runs" else "run_id"
    sql = f"select * from {table}"
    args: list[Any] = []
    if run_ids is not None:
        sql += f" where {key} in ({', '.join('?' * len(run_ids))})"
        args = list(run_ids)
    sql += f" order by {_ORDER[table]}"
    cursor = db.conn.execute(sql, args)
    cursor.arraysize = 2000
    columns = [d[0] for d in cursor.description]

    def rows() -> Iterator[tuple[Any, ...]]:
        while batch := cursor.fetchmany():
            yield from batch

    clock = _CLOCK.get(table)
    if clock is None or clock not in columns:
        return columns, rows()
    runs, i_run, i_ns = _run_clocks(db), columns.index("run_id"), columns.index(clock)

    def placed() -> Iterator[tuple[Any, ...]]:
        for row in rows():
            start = runs.get(row[i_run])
            t_ns = row[i_ns]
            wall = None if start is None or t_ns is None else start[0] + (t_ns - start[1]) / 1e9
            yield (*row, None if wall is None else round(wall, 6))

    return [*columns, "t_unix_s"], placed()


def write_csv(out: TextIO, columns: Sequence[str], rows: Iterator[tuple[Any, ...]]) -> int:
    """Write a header and the rows; returns the number of rows."""
    w = csv.writer(out, lineterminator="\n")
    quoted = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
    w.writerow(columns)
    n = 0
    for row in rows:
        cells = [neutralize(v) for v in row]
        # csv quotes a cell holding LF but not one holding a lone CR, which spreadsheets read as
        # a line break: the rest of the cell would start a row of its own, a formula included.
        for c in cells:
            if c.__class__ is str and "\r" in c:
                quoted.writerow(cells)
                break
        else:
            w.writerow(cells)
        n += 1
    return n


def write_json(out: TextIO, columns: Sequence[str], rows: Iterator[tuple[Any, ...]]) -> int:
    """Write one JSON array of objects, an object per line, without holding the rows."""
    out.write("[")
    n = 0
    for row in rows:
        out.write(",\n" if n else "\n")
        out.write(json.dumps(dict(zip(columns, row, strict=True)), ensure_ascii=False))
        n += 1
    out.write("\n]\n" if n else "]\n")
    return n


def export(
    db: Database, out: TextIO, *, table: str, run_ids: Sequence[int] | None, fmt: str
) -> int:
    """Export ``table`` (rows of ``run_ids``, or all) to ``out`` as ``csv`` or ``json``."""
    columns, rows = iter_rows(db, table, run_ids)
    if fmt == "csv":
        return write_csv(out, columns, rows)
    if fmt == "json":
        return write_json(out, columns, rows)
    raise ValueError(f"unknown format {fmt!r}")
