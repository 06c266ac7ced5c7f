"""Opening the database: migrations, refusing what is not ours, marking dead runs, file mode."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest
from support.runs import FakeRequest, write_run

from llmtop.core.errors import StorageError
from llmtop.storage.db import mark_dead_runs, open_database, open_readonly
from llmtop.storage.schema import TABLES, known_migrations, schema_version


def test_fresh_database_has_every_table_wal_and_private_mode(tmp_path):
    path = tmp_path / "sub" / "new.db"
    db = open_database(path)
    assert set(TABLES) <= set(db.table_names())
    assert db.execute("pragma journal_mode").fetchone()[0] == "wal"
    assert db.execute("pragma user_version").fetchone()[0] == schema_version()
    assert [r["name"] for r in db["_sqlite_migrations"].rows] == known_migrations()
    assert (path.stat().st_mode & 0o777) == 0o600
    db.close()


def test_migrations_are_idempotent(tmp_path):
    path = tmp_path / "t.db"
    open_database(path).close()
    db = open_database(path)
    assert db["_sqlite_migrations"].count == len(known_migrations())


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "t.db"
    db = open_database(path)
    db["_sqlite_migrations"].insert(
        {"migration_set": "llmtop", "name": "m999_from_the_future", "applied_at": "2030-01-01"}
    )
    db.close()
    with pytest.raises(StorageError, match="newer llmtop"):
        open_database(path)
    with pytest.raises(StorageError, match="newer llmtop"):
        open_readonly(path)


def test_not_sqlite_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, I am not a database\n" * 20)
    with pytest.raises(StorageError, match="not an SQLite file"):
        open_database(path)
    assert path.read_text().startswith("hello")  # untouched


def test_readonly_needs_an_existing_file(tmp_path):
    with pytest.raises(StorageError, match="no database"):
        open_readonly(tmp_path / "missing.db")


def test_runs_of_dead_processes_become_interrupted(tmp_path):
    path = tmp_path / "t.db"
    write_run(path, [FakeRequest(0, [10, 20])], status="finished")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(dead.stdout)
    db = open_database(path)
    db["runs"].insert({"status": "running", "pid": dead_pid, "pid_started_at": 1.0})
    dead_run = db.execute("select max(id) from runs").fetchone()[0]
    db["requests"].insert({"run_id": dead_run, "id": 1, "status": "running", "warmup": 0})
    me = __import__("psutil").Process()
    db["runs"].insert({"status": "running", "pid": os.getpid(), "pid_started_at": me.create_time()})
    live_run = db.execute("select max(id) from runs").fetchone()[0]
    assert mark_dead_runs(db) == [dead_run]
    statuses = dict(db.execute("select id, status from runs").fetchall())
    assert statuses[dead_run] == "interrupted" and statuses[live_run] == "running"
    assert statuses[1] == "finished"
    assert (
        db.execute("select status from requests where run_id = ?", [dead_run]).fetchone()[0]
        == "cancelled"
    )


WRITER_SCRIPT = r"""
import asyncio, sys
from llmtop.core.events import TokenReceived
from llmtop.storage.writer import EventWriter, RunInfo

async def main(path):
    async with EventWriter(path, flush_interval_s=0.05) as w:
        run_id, t0 = await w.create_run(RunInfo(name="killed"))
        i = 0
        while True:
            for _ in range(500):
                await w.put(TokenReceived(run_id, 1 + i // 10_000, i, t0 + i))
                i += 1
            await w.flush()  # returns once on disk: acknowledge it
            print(i, flush=True)

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("acks", [1, 7, 30])
def test_writer_killed_with_sigkill_leaves_a_sound_file(tmp_path, acks):
    path = tmp_path / "k.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(path)],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    acked = 0
    for _ in range(acks):
        acked = int(proc.stdout.readline())
    proc.kill()
    proc.wait()
    conn = sqlite3.connect(path)
    assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
    assert conn.execute("select count(*) from tokens").fetchone()[0] >= acked
    conn.close()
    db = open_database(path)  # the next open notices the dead recorder
    assert db.execute("select status from runs").fetchone()[0] == "interrupted"


def test_opening_the_file_again_keeps_the_locks_of_connections_already_open(tmp_path):
    """Closing any descriptor of a file releases every POSIX lock the process holds on it. The
    not-SQLite check opened the file itself, so each open dropped the locks SQLite held for the
    connections already open in the process: another process could then take the file from
    under them. Here it tries to switch the file out of WAL mode, which needs every other
    connection gone; in the dashboard a recorder's checkpoint did it, and the dashboard's next
    read said "database disk image is malformed"."""
    path = tmp_path / "shared.db"
    open_database(path).close()
    reader = open_readonly(path)
    try:
        assert reader.execute("select count(*) from runs").fetchone() == (0,)
        open_readonly(path).close()  # the dashboard opens the file again, as its screens do
        open_database(path).close()
        other = subprocess.run(
            [sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], timeout=0)"
             "; print(c.execute('pragma journal_mode=delete').fetchone()[0])", str(path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert other.stdout.strip() == "wal" or "locked" in other.stderr, (
            other.stdout,
            other.stderr,
        )
        assert reader.execute("select count(*) from runs").fetchone() == (0,)
    finally:
        reader.close()
