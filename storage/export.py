"""Export a table as CSV or JSON, streamed row by row (a million rows in bounded memory).

CSV text cells that a spreadsheet would run as a formula (starting with ``=``, ``+``, ``-``, ``@``,
tab or CR) get a leading ``'``; the csv module quotes commas, quotes and newlines, so awkward text
round-trips through ``csv.reader``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
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

    return columns, rows()


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
