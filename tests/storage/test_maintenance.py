"""Deleting runs: every row of the run goes, other runs stay, and it is all or nothing."""

from __future__ import annotations

import pytest
from support.runs import FakeRequest, write_run

from llmtop.core.errors import StorageError, UsageError
from llmtop.storage.db import open_database
from llmtop.storage.maintenance import delete_runs
from llmtop.storage.schema import TABLES


def counts(db, run_id):
    return {
        t: db.execute(
            f"select count(*) from {t} where {'id' if t == 'runs' else 'run_id'} = ?", [run_id]
        ).fetchone()[0]
        for t in TABLES
    }


@pytest.fixture()
def two_runs(tmp_path):
    path = tmp_path / "m.db"
    samples = [(10.0, 50.0, 1 << 30), (20.0, 60.0, 2 << 30)]
    a = write_run(path, [FakeRequest(0, [100, 120, 140]), FakeRequest(5, [], fail="connect")],
                  samples=samples)  # fmt: skip
    b = write_run(path, [FakeRequest(0, [50, 60])], samples=samples)
    db = open_database(path)
    for run_id in (a, b):  # rows in the tables the writer fills less often
        db["gpu_samples"].insert({"run_id": run_id, "t_ns": 1, "gpu": 0, "util_pct": 5.0})
        db["server_samples"].insert({"run_id": run_id, "t_ns": 1, "source": "s", "key": "k",
                                     "value": 1.0})  # fmt: skip
        db["source_down"].insert({"run_id": run_id, "t_ns": 1, "source": "gpu", "reason": "r"})
        db["client_samples"].insert({"run_id": run_id, "t_ns": 1, "worker": 0, "cpu_pct": 3.0})
        db["servers"].insert({"run_id": run_id, "t_ns": 1, "kind": "vllm", "version": "0.32.0"})
    db.conn.commit()
    return db, a, b


def test_delete_removes_every_row_of_the_run_and_only_that_run(two_runs):
    db, a, b = two_runs
    before_b = counts(db, b)
    assert all(n > 0 for n in counts(db, a).values())
    result = delete_runs(db, [a])
    assert result.run_ids == (a,)
    assert result.rows["requests"] == 2 and result.rows["tokens"] == 3
    assert result.rows["samples"] == 2 and result.rows["runs"] == 1
    assert all(n == 0 for n in counts(db, a).values())
    assert counts(db, b) == before_b
    assert db.execute("pragma integrity_check").fetchone()[0] == "ok"


def test_delete_is_one_transaction(two_runs):
    db, a, _ = two_runs
    # Make the last statement (the runs row) fail: the children deleted before it come back.
    db.execute("create trigger keep before delete on runs begin select raise(abort, 'kept'); end")
    with pytest.raises(StorageError, match="kept"):
        delete_runs(db, [a])
    assert all(n > 0 for n in counts(db, a).values())


def test_delete_refuses_missing_and_live_runs(two_runs):
    db, a, _ = two_runs
    with pytest.raises(UsageError, match="no run with id 99"):
        delete_runs(db, [a, 99])
    assert counts(db, a)["runs"] == 1  # nothing deleted when one id is wrong
    db.execute("update runs set status = 'running' where id = ?", [a])
    with pytest.raises(UsageError, match="still being recorded"):
        delete_runs(db, [a])
    assert delete_runs(db, []).run_ids == ()
