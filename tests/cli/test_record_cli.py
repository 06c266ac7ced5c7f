"""``llmtop record`` as a user meets it: exit codes, one-line errors, JSON, Ctrl-C, the terminal."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import time

import pytest
from click.testing import CliRunner
from support.cli import assert_one_line_error, llmtop_exe, run_llmtop, stderr_besides_self_check
from support.servers import Behavior, FakeServer, refused_url

from llmtop.app.cli import main
from llmtop.storage import queries
from llmtop.storage.db import open_readonly

QUICK = Behavior(ttft_ms=2, itl_ms=1, tokens=5)
STEADY = Behavior(ttft_ms=25, itl_ms=2, tokens=5)


@pytest.fixture(scope="module")
def server():
    with FakeServer({"m": QUICK, "steady": STEADY}) as srv:
        yield srv


def record(server, db, *args, backend="ollama", **kw):
    url = server.url if backend == "ollama" else server.openai_url
    return run_llmtop("record", "--backend", backend, "--url", url, "--model", "m",
                      "--db", str(db), *args, **kw)  # fmt: skip


def test_unreachable_server_exits_1_naming_the_url_and_keeps_a_failed_run(tmp_path):
    url = refused_url()
    proc = run_llmtop("record", "--backend", "ollama", "--url", url, "--model", "m",
                      "--db", str(tmp_path / "u.db"))  # fmt: skip
    assert_one_line_error(proc, 1, url.removeprefix("http://"))
    assert proc.stdout == ""
    run = queries.get_run(open_readonly(tmp_path / "u.db"), 1)
    assert run.status == "failed" and url.removeprefix("http://") in run.error


def test_unknown_model_exits_1_listing_what_the_server_has(server, tmp_path):
    proc = run_llmtop("record", "--backend", "openai", "--url", server.openai_url, "--model",
                      "nope", "--db", str(tmp_path / "m.db"))  # fmt: skip
    assert_one_line_error(proc, 1, "'nope'", "m")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--requests", "0"], "--requests"),
        (["--rate", "0"], "--rate"),
        (["--temperature", "5"], "--temperature"),
        (["--arrival", "poisson"], "--arrival poisson needs --rate"),
        (["--rate", "2", "--arrival", "closed"], "not closed"),
        (["--scenario", "basci"], "built-ins are basic"),
        (["--bogus"], "No such option '--bogus'"),
        (["--prompt", "  "], "--prompt must not be empty"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, args, fragment):
    # in-process (click's runner): the same command object, without a second's startup each
    result = CliRunner().invoke(main, ["record", "--db", str(tmp_path / "x.db"), *args])
    proc = subprocess.CompletedProcess([], result.exit_code, result.stdout, result.stderr)
    assert_one_line_error(proc, 2, fragment)
    assert not (tmp_path / "x.db").exists()


def test_a_bad_scenario_file_exits_2_naming_its_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "b"\n\n[[steps]]\nname = "s"\nconcurency = 4\n')
    proc = run_llmtop("record", "--scenario", str(bad), "--db", str(tmp_path / "x.db"))
    assert_one_line_error(proc, 2, f"{bad}:5", "concurency", "did you mean 'concurrency'")


def test_a_named_api_key_variable_that_is_unset_exits_2(server, tmp_path):
    proc = record(server, tmp_path / "k.db", "--api-key-env", "LLMTOP_TEST_NO_SUCH_KEY",
                  backend="openai")  # fmt: skip
    assert_one_line_error(proc, 2, "LLMTOP_TEST_NO_SUCH_KEY")


def _keys(value: object) -> object:
    """The shape of a JSON value: its keys, recursively (lists by their first item)."""
    if isinstance(value, dict):
        return {k: _keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_keys(value[0])] if value else []
    return None


def test_record_runs_and_report_print_one_shape_of_a_run(server, tmp_path):
    db = tmp_path / "shape.db"
    proc = record(server, db, "--requests", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    recorded = json.loads(proc.stdout)
    (listed,) = json.loads(run_llmtop("runs", "--json", "--db", str(db)).stdout)
    reported = json.loads(run_llmtop("report", "--json", "--db", str(db)).stdout)
    shared = ("run", "slo", "overall", "steps", "client")
    for out in (recorded, listed, reported):
        assert {k: _keys(out[k]) for k in shared} == {k: _keys(listed[k]) for k in shared}
        assert out["run"] == listed["run"]
    assert recorded["overall"]["ttft_ms"] == reported["overall"]["ttft_ms"]
    assert set(listed) == set(shared)  # runs adds nothing; record and report add their own keys
    assert "recording" in recorded and "breakdown" in reported


def test_by_default_each_worker_warms_up_once_and_is_left_out(server, tmp_path):
    proc = record(server, tmp_path / "w.db", "--requests", "3", "--concurrency", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert (out["overall"]["n"], out["overall"]["warmup"]) == (3, 2)
    none = record(server, tmp_path / "w.db", "--requests", "3", "--warmup", "0", "--json")
    assert json.loads(none.stdout)["overall"]["warmup"] == 0


def test_json_summary_warmup_left_out_and_flags_stored(server, tmp_path):
    proc = record(server, tmp_path / "j.db", "--requests", "3", "--warmup", "2", "--json",
                  "--name", "smoke", "--temperature", "0.3")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert stderr_besides_self_check(proc.stderr) == ""  # not a terminal: no progress bar
    out = json.loads(proc.stdout)
    assert (out["run"]["id"], out["run"]["status"], out["run"]["error"]) == (1, "finished", None)
    assert out["recording"]["status"] == "finished" and out["recording"]["failure"] is None
    assert out["run"]["name"] == "smoke" and out["run"]["backend"] == "ollama"
    assert out["overall"]["n"] == 3 and out["overall"]["warmup"] == 2
    step = out["steps"][0]
    assert step["step"] == "default" and step["ttft_ms"]["n"] == 3 and step["temperature"] == 0.3
    db = open_readonly(tmp_path / "j.db")
    flags = queries.get_run(db, 1).params["flags"]
    assert flags["requests"] == 3 and flags["warmup"] == 2 and flags["name"] == "smoke"
    warm = [r["warmup"] for r in db.query("select warmup from requests order by id")]
    assert warm == [1, 1, 0, 0, 0]


def test_summary_table_per_step_of_a_builtin_scenario(server, tmp_path):
    proc = record(server, tmp_path / "s.db", "--scenario", "basic", "--requests", "2",
                  "--max-tokens", "4", "--sample-hz", "50", "--model", "steady")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "run 1 · basic · ollama" in out
    header = next(line for line in out.splitlines() if "short" in line and "long" in line)
    assert header.split() == ["short", "medium", "long", "all"]
    for row in ("TTFT p95 ms", "TPOT mean ms", "decode tok/s", "E2E p95 ms", "req/s",
                "output tok/s", "CPU avg %", "memory peak GiB"):  # fmt: skip
        assert row in out, row
    assert "warm-up: 1 request(s)" in out
    requests_row = next(line for line in out.splitlines() if line.startswith("requests"))
    assert requests_row.split()[1:] == ["2", "2", "2", "6"]
    assert run_llmtop("record", "--quiet", "--db", str(tmp_path / "s.db"), "--backend",
                      "ollama", "--url", server.url, "--model", "m",
                      "--requests", "1").stdout == ""  # fmt: skip


def test_no_tokens_keeps_request_metrics_but_no_chunks(server, tmp_path):
    proc = record(server, tmp_path / "n.db", "--requests", "2", "--no-tokens", "--quiet")
    assert proc.returncode == 0, proc.stderr
    db = open_readonly(tmp_path / "n.db")
    assert db["tokens"].count == 0
    assert all(r["ttft_ms"] is not None for r in db.query("select ttft_ms from requests"))


def wait_for(cond, timeout=60.0):
    """Poll a condition outside this process (the server's log), not a fixed sleep. The
    timeout is generous: a busy machine takes seconds to start the recorder's Python."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.02)


def test_ctrl_c_marks_the_run_cancelled_and_keeps_what_arrived(tmp_path):
    slow = Behavior(ttft_ms=5, itl_ms=50, tokens=1000)
    with FakeServer({"m": slow}) as srv:
        proc = subprocess.Popen(
            [llmtop_exe(), "record", "--backend", "ollama", "--url", srv.url, "--model", "m",
             "--requests", "10", "--concurrency", "2", "--warmup", "0",
             "--db", str(tmp_path / "c.db")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_for(lambda: sum(len(r.sends) >= 3 for r in srv.log()) >= 2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert lines == ["llmtop: interrupted: run 1 marked cancelled; everything received is kept"]
    errors_row = next(line for line in out.splitlines() if line.startswith("errors"))
    assert errors_row.split() == ["errors", "0", "(+2", "cancelled)"]  # what arrived, summed
    db = open_readonly(tmp_path / "c.db")
    assert queries.get_run(db, 1).status == "cancelled"
    rows = list(db.query("select * from requests order by id"))
    assert [r["status"] for r in rows] == ["cancelled", "cancelled"]
    assert all(r["chunks"] >= 3 and r["ttft_ms"] is not None for r in rows)
    assert db["tokens"].count == sum(r["chunks"] for r in rows)


def test_progress_is_drawn_on_a_terminal(server, tmp_path):
    """On a terminal, stderr shows a bar per step; the summary still goes to stdout."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [llmtop_exe(), "record", "--backend", "ollama", "--url", server.url, "--model", "m",
             "--scenario", "temperature", "--requests", "3", "--db", str(tmp_path / "p.db")],
            stdout=subprocess.PIPE, stderr=follower, text=True, timeout=60,
            env={**os.environ, "COLUMNS": "160", "TERM": "xterm"},
        )  # fmt: skip
        os.close(follower)
        follower = -1
        drawn = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        if follower != -1:
            os.close(follower)
        os.close(leader)
    assert proc.returncode == 0
    text = drawn.decode(errors="replace")
    for fragment in ("t0.0 (1/3)", "t1.5 (3/3)", "3/3 req", "ok 3", "tok/s", "ETA"):
        assert fragment in text, (fragment, text[-2000:])
    assert "run 1 · temperature" in proc.stdout


@pytest.mark.parametrize("url", ["refused", "http://not-a-url", "ftp://x"])
def test_a_url_given_is_that_server_or_one_line_naming_it(url, tmp_path):
    """``--url`` under ``auto`` never falls back to the bundled engine (a mistyped vLLM port
    must not read back believable numbers from a 135M model)."""
    url = refused_url() if url == "refused" else url
    proc = run_llmtop("record", "--url", url, "--requests", "1", "--db", str(tmp_path / "u.db"))
    assert_one_line_error(proc, 2 if url.startswith("ftp") else 1, url)
    runs = (
        queries.list_runs(open_readonly(tmp_path / "u.db")) if (tmp_path / "u.db").exists() else []
    )
    assert all(r.backend != "engine" for r in runs)


def test_auto_and_engine_go_through_the_backend_factory(server, tmp_path):
    """``auto`` finds Ollama at OLLAMA_HOST; ``engine --url`` uses an engine already serving
    (the fake speaks the engine's Ollama API), so neither starts a model here."""
    db = tmp_path / "a.db"
    auto = run_llmtop("record", "--requests", "1", "--model", "m", "--db", str(db), "--quiet",
                      env={"OLLAMA_HOST": server.url})  # fmt: skip
    assert auto.returncode == 0, auto.stderr
    engine = run_llmtop("record", "--backend", "engine", "--url", server.url, "--requests", "1",
                        "--model", "m", "--db", str(db), "--quiet")  # fmt: skip
    assert engine.returncode == 0, engine.stderr
    runs = queries.list_runs(open_readonly(db))
    assert [(r.backend, r.base_url, r.status) for r in reversed(runs)] == [
        ("ollama", server.url, "finished"), ("engine", server.url, "finished")
    ]  # fmt: skip


def test_fewer_requests_than_workers_is_a_warning_not_an_error(server, tmp_path):
    proc = record(server, tmp_path / "w.db", "--requests", "2", "--concurrency", "4", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert stderr_besides_self_check(proc.stderr).splitlines() == [
        "llmtop: warning: step 'default' sends 2 requests with concurrency 4: never more than 2 "
        "in flight (give --requests 4 or more)"
    ]


def test_the_summary_shows_step_names_as_written(server, tmp_path):
    """A step's name is text: brackets are not rich markup, ``:fire:`` is not an emoji."""
    scenario = tmp_path / "names.toml"
    scenario.write_text('name = "n"\nwarmup = 0\n[[steps]]\nname = "[fast] :fire:"\nrequests = 1\n')
    proc = record(server, tmp_path / "n.db", "--scenario", str(scenario))
    assert proc.returncode == 0, proc.stderr
    assert "[fast] :fire:" in proc.stdout
