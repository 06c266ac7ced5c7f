"""``llmtop scenarios`` and ``llmtop doctor``, run as a user runs them."""

from __future__ import annotations

import json
import tomllib

from support.cli import assert_one_line_error, run_llmtop
from support.runs import FakeRequest, write_run
from support.servers import FakeServer, refused_url

from llmtop.scenarios.loader import builtin_names, builtin_text
from llmtop.storage.schema import schema_version

BUILTINS = ["basic", "prompt-length", "temperature", "concurrency", "soak", "rate-sweep"]


def test_scenarios_lists_the_builtins_with_their_steps():
    proc = run_llmtop("scenarios")
    assert proc.returncode == 0, proc.stderr
    for name in BUILTINS:
        assert f" {name} " in f" {proc.stdout}", name
    assert "c1, c2, c4, c8" in proc.stdout and "t0.0, t0.7, t1.5" in proc.stdout
    data = json.loads(run_llmtop("scenarios", "--json").stdout)
    assert [s["scenario"] for s in data] == BUILTINS
    assert data[5]["steps"][0]["arrival"] == "poisson" and data[5]["slo"]["ttft_ms"] == 500


def test_one_scenario_in_detail():
    proc = run_llmtop("scenarios", "rate-sweep")
    assert proc.returncode == 0, proc.stderr
    assert "SLOs: TTFT <= 500 ms and TPOT <= 50 ms" in proc.stdout
    assert "stops once a step's goodput < 90%" in proc.stdout
    assert "poisson arrivals at 16 req/s" in proc.stdout
    lengths = run_llmtop("scenarios", "prompt-length").stdout
    assert "generated, about 1500 tokens" in lengths


def test_toml_of_a_builtin_is_the_file_to_copy(tmp_path):
    proc = run_llmtop("scenarios", "basic", "--toml")
    assert proc.returncode == 0 and proc.stdout == builtin_text("basic")
    mine = tmp_path / "mine.toml"
    mine.write_text(proc.stdout.replace('name = "basic"', 'name = "mine"'))
    assert tomllib.loads(mine.read_text())["name"] == "mine"
    check = run_llmtop("scenarios", str(mine))
    assert check.returncode == 0 and "mine" in check.stdout and str(mine) in check.stdout
    assert_one_line_error(run_llmtop("scenarios", "--toml"), 2, "needs a built-in NAME")
    assert_one_line_error(run_llmtop("scenarios", "nope", "--toml"), 2, "no built-in scenario")
    assert sorted(builtin_names()) == sorted(BUILTINS)


def test_a_bad_file_is_one_line_with_its_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[[steps]]\nname = "a"\nrate = "fast"\n')
    assert_one_line_error(run_llmtop("scenarios", str(bad)), 2, f"{bad}:4", "steps[1].rate",
                          "must be a number")  # fmt: skip


def checks_of(proc) -> dict[str, dict]:
    assert proc.returncode == 0, proc.stderr
    return {c["name"]: c for c in json.loads(proc.stdout)}


def test_doctor_finds_ollama_an_openai_server_and_the_database(tmp_path):
    db = tmp_path / "d.db"
    write_run(db, [FakeRequest(0, [100, 120])])
    with FakeServer() as srv:
        host = srv.url.removeprefix("http://")  # OLLAMA_HOST is often written without a scheme
        proc = run_llmtop("doctor", "--json", "--db", str(db), "--url", srv.openai_url,
                          env={"OLLAMA_HOST": host})  # fmt: skip
    checks = checks_of(proc)
    ollama = checks[f"Ollama at {srv.url}"]
    assert ollama["state"] == "ok" and "version 0.0.0-fake" in ollama["detail"]
    assert "1 model(s): fake:latest" in ollama["detail"] and "loaded now: fake" in ollama["detail"]
    openai = checks[f"OpenAI API at {srv.openai_url}"]
    assert openai["state"] == "ok" and "fake" in openai["detail"]
    assert checks["  /metrics"]["state"] == "ok"
    dbc = checks[f"{db} (--db)"]
    assert dbc["state"] == "ok"
    assert f"schema version {schema_version()} of {schema_version()}; 1 run(s)" in dbc["detail"]
    nvml = checks["NVML"]
    assert nvml["area"] == "gpu" and nvml["state"] in ("ok", "off")
    engine = {name: c for name, c in checks.items() if c["area"] == "engine"}
    assert "model file" in engine and "llmtop serve" in engine
    human = run_llmtop("doctor", "--db", str(db), env={"OLLAMA_HOST": refused_url()})
    assert human.returncode == 0 and "not answering" in human.stdout


def test_doctor_creates_nothing_and_says_what_is_off(tmp_path):
    db = tmp_path / "sub" / "none.db"
    proc = run_llmtop("doctor", "--json", "--db", str(db), env={"OLLAMA_HOST": refused_url()})
    checks = checks_of(proc)
    assert not db.exists() and not db.parent.exists()
    assert "not created yet" in checks[f"{db} (--db)"]["detail"]
    ollama = next(c for c in checks.values() if c["name"].startswith("Ollama at"))
    assert ollama["state"] == "off" and "ollama serve" in ollama["detail"]
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not a database at all" * 10)
    proc = run_llmtop("doctor", "--json", "--db", str(bad))
    assert proc.returncode == 1  # a problem found: the JSON still tells what
    checks = {c["name"]: c for c in json.loads(proc.stdout)}
    assert checks[f"{bad} (--db)"]["state"] == "problem"
    assert "not an SQLite file" in checks[f"{bad} (--db)"]["detail"]


def test_doctor_takes_records_backend_flags_and_says_where_the_db_came_from(tmp_path):
    db = tmp_path / "env.db"
    write_run(db, [FakeRequest(0, [100, 120])])
    with FakeServer() as srv:
        flags = run_llmtop("doctor", "--json", "--backend", "openai", "--url", srv.openai_url,
                           env={"OLLAMA_HOST": refused_url(), "LLMTOP_DB": str(db)})  # fmt: skip
        group = run_llmtop("--url", srv.openai_url, "doctor", "--json",
                           env={"OLLAMA_HOST": refused_url(), "LLMTOP_DB": str(db)})  # fmt: skip
    for proc in (flags, group):
        checks = checks_of(proc)
        assert checks[f"OpenAI API at {srv.openai_url}"]["state"] == "ok"
        assert f"{db} ($LLMTOP_DB)" in checks  # not "(--db)": the flag was not given


def test_doctor_exits_1_when_it_finds_a_problem(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not a database at all" * 10)
    proc = run_llmtop("doctor", "--db", str(bad), env={"OLLAMA_HOST": refused_url()})
    assert proc.returncode == 1 and "✗" in proc.stdout
    assert proc.stderr.strip().splitlines()[-1].startswith("llmtop: doctor found 1 problem")
