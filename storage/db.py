"""Opening the database: where it lives, checks that it is ours, migrations, and dead runs.

Every process opens through :func:`open_database` once (the writer thread does it for its own
connection); readers then use :func:`open_readonly`. Failures become one ``StorageError`` line.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import platformdirs
import psutil
from sqlite_utils import Database

from llmtop.core.errors import StorageError
from llmtop.storage.schema import MIGRATIONS, known_migrations, schema_version

ENV_DB = "LLMTOP_DB"
BUSY_TIMEOUT_MS = 10_000
"""A second writer (the dashboard beside a recorder) waits this long for the lock."""


def default_db_path() -> Path:
    """``$LLMTOP_DB``, else ``llmtop.db`` in the user data dir (platformdirs)."""
    env = os.environ.get(ENV_DB)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("llmtop", appauthor=False)) / "llmtop.db"


def resolve_db_path(path: str | os.PathLike[str] | None) -> Path:
    return Path(path).expanduser() if path else default_db_path()


def _check_file(path: Path) -> None:
    """Refuse a file that exists but is not SQLite, before anything writes to it.

    SQLite reads the header itself, through a read-only connection: a descriptor of our own
    opened and closed on the file would release every POSIX lock this process holds on it,
    the ones SQLite holds for the connections already open included (closing any descriptor
    of a file does that). A recorder beside the dashboard could then checkpoint the WAL from
    under the dashboard's readers, whose next open read "database disk image is malformed".
    SQLite keeps such a descriptor open until its locks are gone.
    """
    if not path.exists() or path.stat().st_size == 0:
        return
    try:
        probe = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            probe.execute("PRAGMA schema_version").fetchone()
        finally:
            probe.close()
    except sqlite3.DatabaseError as e:
        if "not a database" in str(e):
            raise StorageError(
                f"{path} is not an llmtop database (not an SQLite file); use --db"
            ) from None
        raise StorageError(f"cannot read database {path}: {e}") from None


def _create_private(path: Path) -> None:
    """Create the file 0600 before SQLite does, so prompts and results are not world-readable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
    except FileExistsError:
        pass
    except OSError as e:
        raise StorageError(f"cannot create database {path}: {e.strerror}") from None


def _connect(path: Path, *, check_same_thread: bool = True) -> Database:
    try:
        conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=check_same_thread
        )
    except sqlite3.Error as e:
        raise StorageError(f"cannot open database {path}: {e}") from None
    return Database(conn)


def open_database(path: str | os.PathLike[str] | None = None, *, migrate: bool = True) -> Database:
    """Open (creating if needed) the database read-write, migrated and checked.

    Raises:
        StorageError: not SQLite, written by a newer llmtop, unreadable, or not writable.
    """
    p = resolve_db_path(path)
    _check_file(p)
    _create_private(p)
    db = _connect(p)
    try:
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        db.enable_wal()
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA foreign_keys = ON")
        check_schema(db, p)
        if migrate:
            MIGRATIONS.apply(db)
            db.execute(f"PRAGMA user_version = {schema_version()}")
        mark_dead_runs(db)
    except sqlite3.DatabaseError as e:
        db.close()
        raise StorageError(f"cannot use database {p}: {e}") from None
    return db


def open_readonly(path: str | os.PathLike[str] | None = None) -> Database:
    """A read-only connection usable from any thread (guard it with a lock if shared).

    The file must exist and be ours; call :func:`open_database` first to create or migrate it.
    """
    p = resolve_db_path(path)
    if not p.exists():
        raise StorageError(f"no database at {p}: record a run first (llmtop record), or use --db")
    _check_file(p)
    try:
        conn = sqlite3.connect(
            f"{p.resolve().as_uri()}?mode=ro",
            uri=True,
            timeout=BUSY_TIMEOUT_MS / 1000,
            check_same_thread=False,
        )
        db = Database(conn)
        check_schema(db, p)
    except sqlite3.DatabaseError as e:
        raise StorageError(f"cannot read database {p}: {e}") from None
    return db


@contextlib.contextmanager
def write_transaction(db: Database) -> Iterator[Database]:
    """``db.atomic()`` that takes the write lock as it begins (``BEGIN IMMEDIATE``).

    A deferred transaction that reads before it writes (sqlite-utils' ``insert`` looks at the
    table first) holds a snapshot; when another process commits in between, SQLite refuses its
    write at once with "database is locked", without the busy wait. Three recorders starting on
    one database hit it (6 processes creating runs in a loop: 76 of 240 failed); taking the lock
    first makes them wait their turn, as ``BUSY_TIMEOUT_MS`` says. Nested: a savepoint.
    """
    if db.conn.in_transaction:
        with db.atomic():
            yield db
        return
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.conn.rollback()
        raise
    try:
        db.conn.execute("COMMIT")
    except BaseException:
        db.conn.rollback()
        raise


def applied_migrations(db: Database) -> list[str]:
    return [m.name for m in MIGRATIONS.applied(db)]


def check_schema(db: Database, path: Path) -> None:
    """Refuse a database that a newer llmtop has migrated past what we know."""
    unknown = [name for name in applied_migrations(db) if name not in known_migrations()]
    if unknown:
        raise StorageError(
            f"{path} was written by a newer llmtop (schema has {unknown[0]!r}, this llmtop "
            f"knows {schema_version()} migrations); upgrade llmtop or use another --db"
        )


def alive(pid: int | None, started_at: float | None) -> bool:
    """Whether the process that recorded a run (its pid and start time) still runs."""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        # A reused pid belongs to a process started after the run's own.
        return started_at is None or abs(proc.create_time() - started_at) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def mark_dead_runs(db: Database) -> list[int]:
    """Mark runs left ``running`` by a process that is gone as ``interrupted``; return their ids.

    Their requests still in flight become ``cancelled`` (what they received stays).
    """
    if not db["runs"].exists():
        return []
    dead = [
        row["id"]
        for row in db.query("select id, pid, pid_started_at from runs where status = 'running'")
        if not alive(row["pid"], row["pid_started_at"])
    ]
    if not dead:
        return []
    now = datetime.now(UTC).isoformat(timespec="seconds")
    with write_transaction(db):
        for run_id in dead:
            db.execute(
                "update runs set status = 'interrupted', ended_at = coalesce(ended_at, ?) "
                "where id = ?",
                [now, run_id],
            )
            db.execute(
                "update requests set status = 'cancelled', error_kind = 'cancelled', "
                "error = 'the recording process ended before this request finished' "
                "where run_id = ? and status = 'running'",
                [run_id],
            )
    return dead
