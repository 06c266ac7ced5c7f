"""Security: API keys never land anywhere, SQL is parameterized, exports defuse formulas,
scenario files are data, the database is private.

The recorded part is one module fixture: real ``llmtop record`` processes against fake servers
that demand a key, into one real database, carrying every hazard at once (keys by each route,
failures whose error bodies echo nothing, text that a spreadsheet or a template engine would run).
Each README row then checks its own part of what was left behind. (``serve`` binding loopback by
default is checked in test_faults_serve.py.)
"""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import subprocess
import tomllib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner
from faults_table import check_rows
from sql_scan import Scanner, load_package, scan_source
from support.cli import assert_one_line_error, run_llmtop
from support.servers import Behavior, FakeServer, RequestLog

from llmtop.app.cli import main
from llmtop.storage.db import open_database
from llmtop.storage.export import EXPORT_TABLES, FORMULA_PREFIXES

ROOT = Path(__file__).resolve().parents[2]
CANARY = uuid.uuid4().hex
KEY_ENV = f"sk-llmtop-env-{CANARY}"
"""Given as ``OPENAI_API_KEY``."""
KEY_NAMED = f"sk-llmtop-named-{CANARY[::-1]}"
"""Given in the variable that ``--api-key-env`` names."""
KEY_WRONG = f"sk-llmtop-wrong-{CANARY[:16]}{CANARY[:16]}"
"""A key the server refuses (401 at the model check)."""
KEY_URL = f"sk-llmtop-url-{CANARY[16:]}{CANARY[16:]}"
"""Typed into ``--url`` as a password, which llmtop refuses."""
KEYS = (KEY_ENV, KEY_NAMED, KEY_WRONG, KEY_URL)

FORMULAS = (
    '=HYPERLINK("http://evil.example","x")',
    "+1+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(A1:A9)",
    "\tTAB=1+1",
    "\rCR=1+1",
    'ok\r=HYPERLINK("http://evil.example/cr")',  # a formula after a lone CR, inside the cell
)
"""Prompt labels a spreadsheet would evaluate."""
FINISH_FORMULA = '=HYPERLINK("http://evil.example/finish","click")'
"""A finish reason the server sends: text from the server, stored in ``done_reason``."""
RUN_NAME = "@SUM(1+1)"


def payloads(tmp: Path) -> list[str]:
    """Prompt texts that would create a file in ``tmp`` if anything evaluated them."""
    return [
        "{{ cycler.__init__.__globals__.os.popen('touch " + str(tmp / "jinja") + "').read() }}",
        "{% for c in ''.__class__.__mro__[1].__subclasses__() %}{{ c }}{% endfor %}",
        "{0.__class__.__mro__} %(x)s {x!r:>{width}}",
        f"$(touch {tmp / 'shell'}) `touch {tmp / 'tick'}` ${{HOME}}",
        "__import__('os').system('touch " + str(tmp / "python") + "')",
        "<script>alert(1)</script> '; drop table runs; --",
        "plain text",
    ]


def _toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string (escapes included)


def hazard_scenario(tmp: Path) -> Path:
    """One step, one request per prompt: every formula label, every payload text."""
    prompts = [
        f"{{ label = {_toml_str(label)}, text = {_toml_str(text)} }}"
        for label, text in zip(FORMULAS, payloads(tmp), strict=True)
    ]
    text = (
        'name = "{{ 7 * 7 }}"\n'
        f"description = {_toml_str(payloads(tmp)[0])}\n\n"
        "[[steps]]\n"
        'name = "=1+1"\n'
        f"requests = {len(prompts)}\nconcurrency = 1\n"
        f"prompts = [{', '.join(prompts)}]\n"
    )
    tomllib.loads(text)  # the test's own file must be valid TOML
    path = tmp / "hazards.toml"
    path.write_text(text, encoding="utf-8")
    return path


_OK = Behavior(tokens=3)
_FINISH_RAW = (
    'data: {"choices":[{"index":0,"delta":{"content":" a"},"finish_reason":null}]}\n\n'
    'data: {"choices":[{"index":0,"delta":{},"finish_reason":' + json.dumps(FINISH_FORMULA)
    + "}]}\n\ndata: [DONE]\n\n"
)  # fmt: skip
SCRIPT_ENV = (
    _OK,
    Behavior(fault="status", status=401),
    Behavior(fault="status", status=500),
    Behavior(fault="status", status=429, error_body=False),
    Behavior(raw=_FINISH_RAW),
    _OK,
    _OK,
)
"""Run 1's seven requests in order: failures among them, the finish-reason formula on the 5th."""
SCRIPT_NAMED = (Behavior(fault="status", status=500), _OK, _OK)


@dataclass
class Recorded:
    """Everything the recordings left: the database, the processes' output, the servers' logs."""

    tmp: Path
    db: Path
    procs: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    logs: dict[str, list[RequestLog]] = field(default_factory=dict)
    outputs: dict[str, bytes] = field(default_factory=dict)
    """Every export, report and listing, by what produced it."""


def _cli(*args: str) -> tuple[str, str]:
    """Run an llmtop command in-process (click's runner: the same command objects as the
    console script, without a second's startup each); its stdout and stderr."""
    result = CliRunner().invoke(main, list(args), env={"NO_COLOR": "1", "COLUMNS": "160"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.stdout, result.stderr


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Recorded:
    tmp = tmp_path_factory.mktemp("security")
    rec = Recorded(tmp, tmp / "sec.db")
    db = str(rec.db)
    common = ("--model", "fake", "--db", db, "--timeout", "5", "--sample-hz", "1", "--warmup", "0")
    with FakeServer(api_key=KEY_ENV) as srv_a, FakeServer(api_key=KEY_NAMED) as srv_b:
        srv_a.script(*SCRIPT_ENV)
        rec.procs["env"] = run_llmtop(
            "record", "--backend", "openai", "--url", srv_a.openai_url, *common,
            "--scenario", str(hazard_scenario(tmp)), "--name", RUN_NAME,
            env={"OPENAI_API_KEY": KEY_ENV},
        )  # fmt: skip
        srv_b.script(*SCRIPT_NAMED)
        rec.procs["named"] = run_llmtop(
            "record", "--backend", "openai", "--url", srv_b.openai_url, *common,
            "--requests", "3", "--api-key-env", "LLMTOP_FAULTS_KEY", "--json",
            env={"OPENAI_API_KEY": "", "LLMTOP_FAULTS_KEY": KEY_NAMED},
        )  # fmt: skip
        rec.procs["wrong"] = run_llmtop(
            "record", "--backend", "openai", "--url", srv_a.openai_url, *common,
            env={"OPENAI_API_KEY": KEY_WRONG},
        )  # fmt: skip
        url = srv_a.openai_url.replace("http://", f"http://me:{KEY_URL}@")
        rec.procs["url"] = run_llmtop("record", "--backend", "openai", "--url", url, *common)
        rec.logs = {"env": srv_a.log(), "named": srv_b.log()}
    for table in EXPORT_TABLES:
        for fmt in ("--csv", "--json"):
            rec.outputs[f"export {fmt} {table}"] = _cli("export", "--db", db, fmt, "--all",
                                                        "--table", table)[0].encode()  # fmt: skip
    rec.outputs["runs --json"] = _cli("runs", "--db", db, "--json")[0].encode()
    rec.outputs["runs"] = _cli("runs", "--db", db)[0].encode()
    for run in ("1", "2", "3"):
        rec.outputs[f"report {run}"] = "".join(_cli("report", run, "--db", db)).encode()
        for fmt in ("--markdown", "--json"):
            rec.outputs[f"report {run} {fmt}"] = "".join(
                _cli("report", run, "--db", db, fmt)
            ).encode()
        for fmt in ("svg", "html"):
            out = tmp / f"report{run}.{fmt}"
            _cli("report", run, "--db", db, f"--{fmt}", str(out))
            rec.outputs[f"report {run} --{fmt}"] = out.read_bytes()
    rec.outputs["compare 1 2"] = "".join(_cli("compare", "1", "2", "--db", db)).encode()
    return rec


def _leaks(blob: bytes) -> list[str]:
    """The keys (or their random halves, so a shortened echo counts too) found in ``blob``."""
    found = []
    for key in KEYS:
        secret = key.rsplit("-", 1)[1]
        for needle in (key, secret[: len(secret) // 2], secret[len(secret) // 2 :]):
            if needle.encode() in blob:
                found.append(needle)
    return found


# --- rows ---------------------------------------------------------------------------------------


def api_key_nowhere(rec: Recorded) -> None:
    # The keys did go out: the servers saw them on every request, failures included.
    env_log, named_log = rec.logs["env"], rec.logs["named"]
    assert len(env_log) == len(SCRIPT_ENV) and len(named_log) == len(SCRIPT_NAMED)
    assert {e.auth for e in env_log} == {f"Bearer {KEY_ENV}"}
    assert {e.auth for e in named_log} == {f"Bearer {KEY_NAMED}"}
    # The runs happened as planned: successes and failures both stored.
    env, named = rec.procs["env"], rec.procs["named"]
    assert env.returncode == 0 and named.returncode == 0, (env.stderr, named.stderr)
    conn = sqlite3.connect(rec.db)
    kinds = conn.execute("select run_id, status, http_status from requests order by run_id, id")
    assert [tuple(r) for r in kinds] == [
        (1, "ok", None), (1, "error", 401), (1, "error", 500), (1, "error", 429), (1, "ok", None),
        (1, "ok", None), (1, "ok", None), (2, "error", 500), (2, "ok", None), (2, "ok", None),
    ]  # fmt: skip
    conn.close()
    # A refused key and a key in the URL: one line each, naming neither key.
    assert_one_line_error(rec.procs["wrong"], 1, "wants an API key")
    assert_one_line_error(rec.procs["url"], 2, "http://***@127.0.0.1", "environment variable")
    # Nowhere: not in any process's output, any file llmtop wrote, any export or report.
    places: dict[str, bytes] = {}
    for name, proc in rec.procs.items():
        places[f"record {name} stdout"] = proc.stdout.encode()
        places[f"record {name} stderr"] = proc.stderr.encode()
    for path in sorted(p for p in rec.tmp.rglob("*") if p.is_file()):
        places[path.relative_to(rec.tmp).as_posix()] = path.read_bytes()
    places.update(rec.outputs)
    assert "sec.db" in places and all(places[k] for k in ("sec.db", "runs --json"))
    leaks = {where: found for where, blob in places.items() if (found := _leaks(blob))}
    assert leaks == {}, leaks


def _csv_rows(rec: Recorded, table: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(rec.outputs[f"export --csv {table}"].decode())))


def formula_cells(rec: Recorded) -> None:
    requests = [r for r in _csv_rows(rec, "requests") if r["run_id"] == "1"]
    starts = FORMULA_PREFIXES
    assert sorted(r["prompt_label"] for r in requests) == sorted(
        "'" + f if f.startswith(starts) else f for f in FORMULAS
    )
    # A lone CR inside a cell is quoted, so no spreadsheet starts a row (a formula) there.
    raw = rec.outputs["export --csv requests"].decode()
    assert '"ok\r=HYPERLINK(""http://evil.example/cr"")"' in raw
    assert {r["step"] for r in requests} == {"'=1+1"}
    reasons = {r["done_reason"] for r in requests}
    assert reasons == {"", "stop", "'" + FINISH_FORMULA}
    runs = {r["id"]: r for r in _csv_rows(rec, "runs")}
    assert runs["1"]["name"] == "'" + RUN_NAME
    # No cell anywhere in any CSV starts a formula; JSON keeps the text as it is.
    for table in EXPORT_TABLES:
        for row in csv.reader(io.StringIO(rec.outputs[f"export --csv {table}"].decode())):
            assert not [c for c in row if c[:1] in ("=", "+", "@", "\t", "\r")], (table, row)
            assert not [c for c in row if c[:1] == "-" and not _number(c)], (table, row)
    labels = [r["prompt_label"] for r in json.loads(rec.outputs["export --json requests"])]
    assert set(FORMULAS) <= set(labels)


def _number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def scenario_no_code(rec: Recorded) -> None:
    # Nothing the payloads would have created exists: nothing was evaluated...
    made = {"jinja", "shell", "tick", "python"} & {p.name for p in rec.tmp.iterdir()}
    assert made == set()
    # ...and every payload went to the server exactly as written, and was stored as written.
    sent = {e.body["messages"][-1]["content"] for e in rec.logs["env"]}
    assert sent == set(payloads(rec.tmp))
    # The file sets no max_tokens: the default went out (it once sent a slot descriptor, and
    # the run died with a traceback).
    assert {e.body["max_tokens"] for e in rec.logs["env"]} == {128}
    conn = sqlite3.connect(rec.db)
    scenario, params = conn.execute(
        "select scenario, params_json from runs where id = 1"
    ).fetchone()
    conn.close()
    assert scenario == "{{ 7 * 7 }}"
    assert json.loads(params)["steps"][0]["name"] == "=1+1"
    # A file in a format that can carry code (YAML tags) is refused with one line, not run.
    for name, text in (
        ("evil.yaml", f'!!python/object/apply:os.system ["touch {rec.tmp / "yaml"}"]\n'),
        ("evil.toml", f'name: !!python/object/apply:os.system ["touch {rec.tmp / "yaml"}"]\n'),
    ):
        bad = rec.tmp / name
        bad.write_text(text)
        proc = run_llmtop("record", "--scenario", str(bad), "--db", str(rec.tmp / "never.db"))
        assert_one_line_error(proc, 2, str(bad))
        assert not (rec.tmp / "yaml").exists()


def db_private(rec: Recorded) -> None:
    assert (rec.db.stat().st_mode & 0o777) == 0o600  # as `record` created it
    # Under the most permissive umask, with the write-ahead log and shared memory in use,
    # every file SQLite makes is private too (SQLite gives them the database's mode).
    path = rec.tmp / "umask0" / "private.db"
    old = os.umask(0)
    try:
        db = open_database(path)
        db.execute("insert into runs (name, status) values (?, ?)", ["x", "finished"])
        db.conn.commit()
        modes = {p.name: p.stat().st_mode & 0o777 for p in path.parent.iterdir()}
        db.close()
    finally:
        os.umask(old)
    assert modes == {"private.db": 0o600, "private.db-wal": 0o600, "private.db-shm": 0o600}


EXEMPT: dict[tuple[str, int], str] = {}
"""SQL calls the scanner may not trust, each with its reason; none so far."""


def _package_dirs() -> dict[str, Path]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return {pkg: ROOT / d for pkg, d in cfg["tool"]["setuptools"]["package-dir"].items()}


def sql_parameterized(rec: Recorded | None) -> None:
    modules = load_package(_package_dirs())
    scanner = Scanner(modules)
    findings = [str(f) for m in modules.values() for f in scanner.findings(m)
                if (Path(f.path).relative_to(ROOT).as_posix(), f.line) not in EXEMPT]  # fmt: skip
    assert findings == [], "\n".join(findings)
    # Not vacuous: the SQL built at run time (the export, deletion, filters, charts, pragmas)
    # was looked at and found made of allow-listed names and `?` marks.
    built = {Path(p).relative_to(ROOT).as_posix() for p, _, dynamic in scanner.checked if dynamic}
    assert {"storage/export.py", "storage/maintenance.py", "storage/queries.py",
            "storage/db.py", "storage/rows.py"} <= built  # fmt: skip
    assert len(scanner.checked) >= 30


PLANTED = """
ALLOWED = ("a", "b")
def f(db, name, conn, self):
    db.execute(f"select * from runs where name = '{name}'")
    db.execute("select * from runs where name = '%s'" % name)
    db.execute("select * from runs where name = '{}'".format(name))
    db.execute("select * from runs where name = '" + name + "'")
    sql = "select * from runs where 1"
    sql += " and name = " + name
    db.query(sql)
    where = []
    where.append(f"name = '{name}'")
    db.query(" and ".join(where))
    db["runs"].rows_where(f"name = '{name}'")
    db["runs"].count_where(where=f"name = '{name}'")
    if name in ALLOWED:
        pass
    db.execute(f"select {name} from runs")
    for col, value in (("model", name),):
        db.execute(f"select * from runs where {value} = 1")
    conn.executescript(self.script)
    if name not in ALLOWED:
        print("no raise: not a guard")
    db.execute(f"select {name} from t")
    db.create_view("v", f"select {name} from t")
"""
SAFE = """
COLS = ("a", "b")
ORDER = {"a": "id", "b": "t_ns"}
def _key(t):
    return "id" if t == "runs" else "run_id"
def g(db, col, ids, step):
    if col not in COLS:
        raise ValueError(col)
    db.execute(f"select {col} from t where id in ({', '.join('?' * len(ids))})", ids)
    for c in COLS:
        db.execute(f"select {c} from t order by {ORDER[c]}")
    for c, v in (("a", step),):
        db.execute(f"select {c} from t where x = ?", [v])
    db.execute(f"select {_key(col)} from t")
    sql = "select 1" + (" and step = ?" if step else "")
    sql += f" limit {len(ids)}"
    db.query(sql, [step])
def h(db, metric):
    if metric in COLS:
        db.execute(f"select {metric} from t")
    elif metric in ORDER:
        db.execute(f"select {metric} from t")
"""


def sql_scanner_catches(rec: Recorded | None) -> None:
    planted = scan_source(PLANTED)
    assert [f.line for f in planted if f.untrusted == "name"] == [4, 5, 6, 7, 10, 13, 14, 15, 18,
                                                                  24, 25, 20]  # fmt: skip
    assert [f.untrusted for f in planted if f.line == 21] == ["self.script"]
    assert scan_source(SAFE) == []
    # The real export code, its allow-list check taken out, is caught.
    source = (ROOT / "storage" / "export.py").read_text(encoding="utf-8")
    guard = "    if table not in EXPORT_TABLES:\n"
    assert guard in source and scan_source(source, "export") == []
    unguarded = source.replace(guard, "    if table is None:\n")
    assert [f.untrusted for f in scan_source(unguarded, "export")] == ["table"]


CASES: dict[str, Callable[[Recorded], None]] = {
    "api-key-nowhere": api_key_nowhere,
    "formula-cells": formula_cells,
    "scenario-no-code": scenario_no_code,
    "db-private": db_private,
    "sql-parameterized": sql_parameterized,
    "sql-scanner-catches": sql_scanner_catches,
}
STATIC = {"sql-parameterized", "sql-scanner-catches"}
"""Rows that read the sources, not the recording."""


def test_the_readme_lists_exactly_these_checks():
    check_rows("test_faults_security.py", CASES)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in CASES if n not in STATIC])
def test_security(recorded, name: str):
    CASES[name](recorded)


@pytest.mark.parametrize("name", sorted(STATIC))
def test_security_static(name: str):
    CASES[name](None)
