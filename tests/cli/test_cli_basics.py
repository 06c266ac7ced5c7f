"""The command line itself: help, version, every command present, runs and export, clear errors."""

from __future__ import annotations

import csv
import io
import json

import pytest
from support.cli import assert_one_line_error, run_llmtop
from support.runs import FakeRequest, write_run

from llmtop import __version__
from llmtop.storage.db import open_database

COMMANDS = ["record", "export", "runs", "report", "compare", "scenarios", "doctor", "serve"]


def test_help_lists_every_command_of_the_design():
    proc = run_llmtop("--help")
    assert proc.returncode == 0
    for name in COMMANDS:
        assert f"  {name} " in proc.stdout, name


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help(name):
    proc = run_llmtop(name, "--help")
    assert proc.returncode == 0 and "Usage: llmtop " + name in proc.stdout


def test_version():
    proc = run_llmtop("--version")
    assert proc.returncode == 0 and __version__ in proc.stdout


@pytest.fixture()
def dbfile(tmp_path):
    path = tmp_path / "cli.db"
    write_run(path, [FakeRequest(0, [100, 120, 140], prompt_label="=cmd|' /C calc'!A0")])
    write_run(path, [FakeRequest(0, [200, 210]), FakeRequest(10, [], fail="connect")])
    return path


def test_runs_table_and_json(dbfile):
    proc = run_llmtop("runs", "--db", str(dbfile))
    assert proc.returncode == 0, proc.stderr
    assert "TTFT p50 ms" in proc.stdout and "100.0" in proc.stdout
    data = json.loads(run_llmtop("--db", str(dbfile), "runs", "--json").stdout)
    assert [r["run"]["id"] for r in data] == [2, 1]
    assert data[0]["run"]["requests"] == 2 and data[0]["run"]["errors"] == 1
    assert data[1]["overall"]["ttft_ms"]["p50"] == pytest.approx(100.0)


def test_export_defaults_to_last_run_and_stdout(dbfile):
    proc = run_llmtop("export", "--csv", "--db", str(dbfile))
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [r["run_id"] for r in rows] == ["2", "2"]


def test_export_run_all_table_and_file(dbfile, tmp_path):
    out = tmp_path / "t.json"
    proc = run_llmtop("export", "--json", "--run", "1", "--table", "tokens", "-o", str(out),
                      env={"LLMTOP_DB": str(dbfile)})  # fmt: skip
    assert proc.returncode == 0 and "wrote 3 tokens rows" in proc.stderr
    assert len(json.loads(out.read_text())) == 3
    everything = run_llmtop("export", "--csv", "--all", "--table", "requests", "--db", str(dbfile))
    rows = list(csv.DictReader(io.StringIO(everything.stdout)))
    assert len(rows) == 3 and rows[0]["prompt_label"].startswith("'=cmd")


def test_env_var_selects_database(dbfile):
    data = json.loads(run_llmtop("runs", "--json", env={"LLMTOP_DB": str(dbfile)}).stdout)
    assert len(data) == 2


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["export"], 2, "--csv or --json"),
        (["export", "--csv", "--run", "42"], 2, "no run with id 42"),
        (["export", "--csv", "--all", "--last"], 2, "choose one of"),
    ],
)
def test_export_usage_errors(dbfile, args, code, fragment):
    assert_one_line_error(run_llmtop(*args, "--db", str(dbfile)), code, fragment)


def test_export_of_empty_database_says_so(tmp_path):
    proc = run_llmtop("export", "--csv", "--db", str(tmp_path / "empty.db"))
    assert_one_line_error(proc, 2, "no runs")


def test_not_sqlite_and_newer_schema_are_one_line(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"\x00\x01garbage" * 100)
    assert_one_line_error(run_llmtop("runs", "--db", str(bad)), 1, "not an SQLite file", str(bad))
    newer = tmp_path / "newer.db"
    db = open_database(newer)
    db["_sqlite_migrations"].insert(
        {"migration_set": "llmtop", "name": "m900_x", "applied_at": "x"}
    )
    db.close()
    assert_one_line_error(run_llmtop("export", "--csv", "--db", str(newer)), 1, "newer llmtop")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["runs", "--db", "{dir}"], "'llmtop runs --help'"),
        (["report", "--db", "{dir}"], "is a directory"),
        (["export", "--csv", "--db", "{dir}"], "is a directory"),
        (["compare", "1", "2", "--db", "{dir}"], "'llmtop compare --help'"),
        (["export", "--table", "nosuch"], "'nosuch' is not one of"),
        (["runs", "--since"], "'llmtop runs --help'"),
        (["nosuch"], "No such command 'nosuch'"),
        (["--requests", "0"], "'llmtop --help'"),
        (["record", "--concurrency", "0"], "'llmtop record --help'"),
    ],
)
def test_every_usage_error_is_one_line(tmp_path, args, fragment):
    """click's four-line usage box never reaches the user: one ``llmtop:`` line, exit 2."""
    args = [a.replace("{dir}", str(tmp_path)) for a in args]
    assert_one_line_error(run_llmtop(*args), 2, fragment)
