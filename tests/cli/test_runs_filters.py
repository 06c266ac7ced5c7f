"""`llmtop runs`: filters, --since in every form, and deleting (asking first on a terminal)."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from support.cli import assert_one_line_error, llmtop_exe, run_llmtop
from support.runs import FakeRequest, write_run

from llmtop.app.cli import main
from llmtop.app.commands.runs import parse_since
from llmtop.core.errors import UsageError
from llmtop.storage.db import open_database
from llmtop.storage.writer import RunInfo


@pytest.fixture()
def dbfile(tmp_path):
    """Three runs of different models, backends and scenarios, started on known days."""
    path = tmp_path / "runs.db"
    infos = [
        RunInfo(name="a", backend="ollama", model="llama3.1:8b", scenario="basic"),
        RunInfo(name="b", backend="openai", model="qwen2.5:7b", scenario="basic"),
        RunInfo(name="c", backend="ollama", model="qwen2.5:7b", scenario="concurrency"),
    ]
    for info in infos:
        write_run(path, [FakeRequest(0, [100, 120])], info=info)
    db = open_database(path)
    for run_id, day in ((1, "2026-01-10"), (2, "2026-02-10"), (3, "2026-03-10")):
        db.execute(
            "update runs set started_at = ? where id = ?", [f"{day}T12:00:00.000+00:00", run_id]
        )
    db.conn.commit()
    db.close()
    return str(path)


def ids(*args: str, db: str) -> list[int]:
    """The ids ``llmtop runs --json`` lists (in-process through click's runner: many calls)."""
    result = CliRunner().invoke(main, ["runs", "--json", *args, "--db", db])
    assert result.exit_code == 0, result.output
    return [r["run"]["id"] for r in json.loads(result.stdout)]


def test_filters(dbfile):
    assert ids(db=dbfile) == [3, 2, 1]
    assert ids("--model", "qwen2.5:7b", db=dbfile) == [3, 2]
    assert ids("--backend", "ollama", db=dbfile) == [3, 1]
    assert ids("--scenario", "basic", "--model", "qwen2.5:7b", db=dbfile) == [2]
    assert ids("--since", "2026-02-10T12:00:00Z", db=dbfile) == [3, 2]
    assert ids("--since", "2026-03-11", db=dbfile) == []
    proc = run_llmtop("runs", "--model", "nope", "--db", dbfile)
    assert proc.returncode == 0 and "no runs match --model nope" in proc.stderr


def test_since_forms():
    now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_since("2026-04-30T10:00:00+02:00", now) == "2026-04-30T08:00:00.000+00:00"
    assert parse_since("2h", now) == "2026-05-01T10:00:00.000+00:00"
    assert parse_since("30m", now) == "2026-05-01T11:30:00.000+00:00"
    assert parse_since("7d", now) == "2026-04-24T12:00:00.000+00:00"
    local_day = (
        datetime(2026, 4, 30).astimezone().astimezone(UTC).isoformat(timespec="milliseconds")
    )
    assert parse_since("2026-04-30", now) == local_day  # a bare date is local midnight
    today = parse_since("today", now)
    assert parse_since("yesterday", now) < today <= now.isoformat()
    with pytest.raises(UsageError, match="--since 'soon'"):
        parse_since("soon", now)


def test_bad_arguments(dbfile):
    assert_one_line_error(run_llmtop("runs", "--since", "soon", "--db", dbfile), 2, "--since")
    assert_one_line_error(run_llmtop("runs", "--yes", "--db", dbfile), 2, "--yes only goes with")
    assert_one_line_error(run_llmtop("runs", "--delete", "1", "--model", "m", "--db", dbfile),
                          2, "--delete takes run ids only")  # fmt: skip


def test_delete_with_yes_and_refused_without_a_terminal(dbfile):
    proc = run_llmtop("runs", "--delete", "2", "--db", dbfile)  # stdin is not a terminal
    assert_one_line_error(proc, 2, "add --yes")
    assert ids(db=dbfile) == [3, 2, 1]
    proc = run_llmtop("runs", "--delete", "2", "--delete", "3", "--yes", "--db", dbfile)
    assert proc.returncode == 0, proc.stderr
    assert "deleted runs 2, 3 (2 requests, 4 tokens)" in proc.stdout
    assert ids(db=dbfile) == [1]
    assert_one_line_error(run_llmtop("runs", "--delete", "2", "--yes", "--db", dbfile), 2,
                          "no run with id 2")  # fmt: skip


def on_a_terminal(args: list[str], answer: bytes) -> tuple[int, str]:
    """Run llmtop with stdin and stdout on a pseudo-terminal, answer its question, read it all."""
    leader, follower = pty.openpty()
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "120"}
    proc = subprocess.Popen([llmtop_exe(), *args], stdin=follower, stdout=follower,
                            stderr=follower, env=env, close_fds=True)  # fmt: skip
    os.close(follower)
    out = b""
    answered = False
    while True:
        ready, _, _ = select.select([leader], [], [], 30)
        if not ready:
            proc.kill()
            raise AssertionError(f"no output from llmtop; so far: {out!r}")
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed: the process is gone
            break
        if not chunk:
            break
        out += chunk
        if not answered and b"[y/N]" in out:
            os.write(leader, answer)
            answered = True
    os.close(leader)
    return proc.wait(timeout=30), out.decode(errors="replace")


@pytest.mark.parametrize(
    ("answer", "kept"), [(b"y\n", [3, 1]), (b"n\n", [3, 2, 1]), (b"\n", [3, 2, 1])]
)
def test_delete_asks_on_a_terminal(dbfile, answer, kept):
    code, out = on_a_terminal(["runs", "--delete", "2", "--db", dbfile], answer)
    assert code == 0, out
    assert "run 2 'b' (basic, openai, qwen2.5:7b), 1 requests" in out
    assert "Delete run 2 and all its data? [y/N]" in out
    assert ids(db=dbfile) == kept
    assert ("deleted run 2" in out) == (kept == [3, 1])


def test_runs_that_failed_before_a_request_are_hidden_unless_all(dbfile, tmp_path):
    refused = run_llmtop("record", "--backend", "ollama", "--url", "http://127.0.0.1:9",
                         "--model", "m", "--db", dbfile)  # fmt: skip
    assert refused.returncode == 1
    assert ids(db=dbfile) == [3, 2, 1]
    assert ids("--all", db=dbfile) == [4, 3, 2, 1]
    assert ids("--limit", "1", db=dbfile) == [3]  # the limit counts the runs shown
    table = run_llmtop("runs", "--db", dbfile)
    assert "1 run that failed before a request not shown; --all shows them" in table.stderr


def test_names_are_shown_as_written(tmp_path):
    """A run's name is text: "[red]x[/red]" is not rich markup, ":fire:" not an emoji."""
    path = tmp_path / "names.db"
    write_run(path, [FakeRequest(0, [100, 120])], info=RunInfo(name="[red]x[/red] :fire:"))
    result = CliRunner().invoke(main, ["runs", "--db", str(path)])
    assert result.exit_code == 0, result.output
    assert "[red]x[/red] :fire:" in result.stdout
