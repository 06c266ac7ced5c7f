"""The live aggregator on hand-written event lists: every field asserted against numbers worked
out by hand, and the run table against the stored summary of the same events."""

from __future__ import annotations

import threading

import pytest
from support.runs import FakeRequest, request_events, write_run

from llmtop.core.events import (
    GpuSampled,
    RequestFailed,
    RequestFinished,
    RequestStarted,
    ResourcesSampled,
    ServerSampled,
    ServerTimings,
    SourceDown,
    TokenReceived,
)
from llmtop.core.metrics import Slo
from llmtop.live.aggregate import MAX_ITL, WINDOW_NS, Aggregator
from llmtop.storage import queries
from llmtop.storage.db import open_database

MS = 1_000_000
T0 = 7_000_000_000


def feed(agg: Aggregator, events) -> None:
    for ev in events:
        agg.add(ev)


def request(rid: int, start_ms: float, chunks_ms: list[float], end_ms: float, *, run_id=1,
            step="s1", warmup=False, n_tokens=1, server=None):  # fmt: skip
    """Events of one successful request, timestamps in ms after T0."""
    server = server or ServerTimings()
    t = [T0 + int(c * MS) for c in chunks_ms]
    evs = [RequestStarted(run_id, rid, T0 + int(start_ms * MS), step=step, prompt_label="p",
                          prompt_chars=11, warmup=warmup)]  # fmt: skip
    evs += [TokenReceived(run_id, rid, i, ti, n_tokens=n_tokens) for i, ti in enumerate(t)]
    evs.append(
        RequestFinished(
            run_id,
            rid,
            T0 + int(end_ms * MS),
            T0 + int(start_ms * MS),
            t[0],
            t[-1],
            len(t),
            len(t) * n_tokens,
            server,
        )
    )
    return evs


def test_nothing_arrived_returns_the_same_snapshot():
    agg = Aggregator()
    first = agg.snapshot()
    assert first.version == 1 and first.table.ok == 0 and first.resources is None
    assert agg.snapshot() is first  # idle: no work, no new object
    agg.add(ResourcesSampled(None, T0, 12.5, (10.0, 15.0), 3 << 30, 8 << 30))
    assert agg.pending == 1
    second = agg.snapshot()
    assert second is not first and second.version == 2 and agg.pending == 0
    assert agg.snapshot() is second


def test_run_table_by_hand():
    agg = Aggregator(Slo(ttft_ms=250, tpot_ms=15))
    # r1: TTFT 200, chunks every 20 ms, 4 tokens -> TPOT 20, decode 50 tok/s, E2E 265
    feed(agg, request(1, 0, [200, 220, 240, 260], 265))
    # r2: warm-up, excluded from every statistic
    feed(agg, request(2, 300, [310, 320], 330, warmup=True))
    # r3: TTFT 100, two chunks of 2 tokens 10 ms apart -> n=4, TPOT 10/3, decode 300 tok/s
    feed(agg, request(3, 1000, [1100, 1110], 1120, n_tokens=2))
    # r4: HTTP 500 after 50 ms
    feed(agg, [RequestStarted(1, 4, T0 + 2000 * MS, step="s1"),
               RequestFailed(1, 4, T0 + 2050 * MS, "http_status", "500", T0 + 2000 * MS)])  # fmt: skip
    s = agg.snapshot()
    t = s.table
    assert (t.ok, t.errors, t.cancelled, t.warmup, t.output_tokens) == (2, 1, 0, 1, 8)
    assert t.ttft_ms.n == 2 and t.ttft_ms.mean == pytest.approx(150.0)
    assert t.ttft_ms.p50 == pytest.approx(150.0) and t.ttft_ms.p95 == pytest.approx(195.0)
    assert t.e2e_ms.mean == pytest.approx((265 + 120) / 2)
    assert t.tpot_ms.p50 == pytest.approx((20 + 10 / 3) / 2)
    assert sorted(s.tps_series) == pytest.approx([50.0, 300.0])
    # measured window: first start (0 ms) to last end (2050 ms, the failure)
    assert t.req_per_s == pytest.approx(2 / 2.050)
    assert t.out_tok_per_s == pytest.approx(8 / 2.050)
    assert t.error_rate == pytest.approx(1 / 3)
    # goodput: r1 misses TPOT <= 15, r3 meets both, r4 failed
    assert t.goodput == pytest.approx(1 / 3)
    # ITL: r1 gives 3 gaps of 20 ms; r3's second chunk of 2 tokens over 10 ms gives 5, 5
    assert sorted(s.itl_values) == pytest.approx([5.0, 5.0, 20.0, 20.0, 20.0])
    assert s.itl_window.max == pytest.approx(20.0)
    assert sorted(s.e2e_values) == pytest.approx([120.0, 265.0])
    assert [r.request_id for r in s.finished] == [4, 3, 2, 1]  # newest first
    assert s.finished[0].status == "error" and s.finished[0].error == "http_status: 500"
    assert s.finished[2].warmup and s.in_flight == ()
    agg.set_slo(Slo(ttft_ms=250))  # the scenario's SLOs arrive: goodput is judged again
    assert agg.snapshot().table.goodput == pytest.approx(2 / 3)


def test_in_flight_request_shows_progress():
    agg = Aggregator()
    evs = request(1, 0, [200, 220, 240], 250)[:-1]  # no final line yet
    feed(agg, evs)
    s = agg.snapshot()
    (r,) = s.in_flight
    assert (r.status, r.tokens, r.step, r.prompt_chars) == ("running", 3, "s1", 11)
    assert r.ttft_ms == pytest.approx(200.0) and r.decode_tps == pytest.approx(50.0)
    assert r.e2e_ms is None and s.table.ok == 0 and s.step == "s1"


def test_window_keeps_the_last_five_minutes():
    agg = Aggregator()
    feed(agg, request(1, 0, [100, 110], 120))
    feed(agg, request(2, 1000, [1300, 1310], 1320))
    assert agg.snapshot().ttft_series == pytest.approx((100.0, 300.0))
    # a sample 5 minutes after r1 ended, but not after r2 ended: r1 drops out of the window
    later = T0 + 120 * MS + WINDOW_NS + 1
    agg.add(ResourcesSampled(None, later, 1.0, (1.0,), 1, 2))
    s = agg.snapshot()
    assert s.ttft_series == pytest.approx((300.0,)) and s.ttft_window.p50 == pytest.approx(300.0)
    assert s.table.ok == 2  # the run's table keeps every request


def test_a_new_run_starts_a_new_table():
    agg = Aggregator()
    feed(agg, request(1, 0, [100, 110], 120, run_id=1))
    assert agg.snapshot().table.ok == 1
    feed(agg, request(1, 200, [400, 410], 420, run_id=2))
    s = agg.snapshot()
    assert s.run_id == 2 and s.table.ok == 1 and s.table.ttft_ms.mean == pytest.approx(200.0)
    assert s.ttft_series == pytest.approx((200.0,))


def test_cancelled_requests_count_apart():
    agg = Aggregator()
    feed(agg, [RequestStarted(1, 1, T0), TokenReceived(1, 1, 0, T0 + 50 * MS),
               RequestFailed(1, 1, T0 + 80 * MS, "cancelled", "stopped", T0, T0 + 50 * MS,
                             T0 + 50 * MS, 1, 1)])  # fmt: skip
    s = agg.snapshot()
    assert (s.table.ok, s.table.errors, s.table.cancelled) == (0, 0, 1)
    assert s.table.error_rate is None and s.table.goodput is None
    assert s.finished[0].status == "cancelled" and s.finished[0].ttft_ms == pytest.approx(50.0)


def test_resources_gpus_servers_and_sources_down():
    agg = Aggregator()
    feed(agg, [
        SourceDown(None, T0, "gpu", "no NVIDIA driver"),
        ResourcesSampled(None, T0, 10.0, (5.0, 15.0), 1 << 30, 8 << 30, 512 << 20, 150.0),
        ResourcesSampled(None, T0 + 500 * MS, 20.0, (10.0, 30.0), 2 << 30, 8 << 30, None, None),
        ServerSampled(None, T0, "ollama", {"ollama:loaded:llama3.2:1b:size": 2e9,
                                           "ollama:loaded:llama3.2:1b:size_vram": 1.5e9}),
        ServerSampled(None, T0, "vllm", {"vllm:num_requests_running": 3.0,
                                         "vllm:num_requests_waiting": 1.0,
                                         "vllm:kv_cache_usage_perc": 0.25,
                                         "vllm:generation_tokens_total": 1000.0,
                                         "vllm:time_to_first_token_seconds:count": 10.0,
                                         "vllm:time_to_first_token_seconds:sum": 2.0}),
        ServerSampled(None, T0 + 500 * MS, "vllm", {"vllm:num_requests_running": 3.0,
                                                    "vllm:num_requests_waiting": 1.0,
                                                    "vllm:kv_cache_usage_perc": 0.25,
                                                    "vllm:generation_tokens_total": 1050.0,
                                         "vllm:time_to_first_token_seconds:count": 12.0,
                                         "vllm:time_to_first_token_seconds:sum": 2.25}),
    ])  # fmt: skip
    s = agg.snapshot()
    r = s.resources
    assert r is not None and (r.cpu_pct, r.per_core, r.mem_used_bytes) == (
        20.0,
        (10.0, 30.0),
        2 << 30,
    )
    assert r.cpu_series == (10.0, 20.0) and r.mem_series == (1 << 30, 2 << 30)
    assert r.server_rss_bytes is None and r.server_rss_series == (512 << 20,)
    assert s.gpus == () and s.down == (("gpu", "no NVIDIA driver"),)
    ollama_view, metrics_view = s.servers  # sorted by source
    assert (metrics_view.running, metrics_view.waiting, metrics_view.kv_cache_pct) == (
        3.0,
        1.0,
        25.0,
    )
    assert metrics_view.models == () and metrics_view.mean_ms("ttft_s") == pytest.approx(125.0)
    assert metrics_view.generation_tps == pytest.approx(100.0)  # 50 tokens in 0.5 s
    (m,) = ollama_view.models
    assert (m.name, m.size_bytes, m.vram_bytes) == ("llama3.2:1b", 2e9, 1.5e9)
    assert ollama_view.running is None
    feed(agg, [GpuSampled(None, T0 + MS, 0, "H100", 87.0, 40 << 30, 80 << 30, 350.0, 61.0),
               SourceDown(None, T0 + 2 * MS, "server:ollama", "connection refused")])  # fmt: skip
    s = agg.snapshot()
    (g,) = s.gpus
    assert (g.name, g.util_pct, g.util_series, g.temp_c) == ("H100", 87.0, (87.0,), 61.0)
    assert s.down == (("server:ollama", "connection refused"),)  # gpu back, ollama gone
    # what /api/ps said is no longer read: the reason shows, not its old models
    assert [v.source for v in s.servers] == ["vllm"]
    agg.add(ServerSampled(None, T0 + 3 * MS, "ollama", {}))
    assert agg.snapshot().down == ()  # ollama answers again


def test_a_new_target_forgets_the_old_servers_numbers_and_errors():
    """The watcher's "no process listens on port 11434" and its server's values must not show
    during a run against another server (issue 15: the panel described the wrong server)."""
    agg = Aggregator()
    feed(agg, [
        ServerSampled(None, T0, "vllm", {"vllm:num_requests_running": 2.0}),
        SourceDown(None, T0, "server-process", "no process listens on port 11434 yet"),
        SourceDown(None, T0, "server:ollama", "connection refused"),
        SourceDown(None, T0, "gpu", "no NVIDIA driver"),
    ])  # fmt: skip
    agg.add(ServerSampled(None, T0 + MS, "vllm", {"vllm:num_requests_running": 1.0}))
    agg.clear_server()  # before the snapshot: the pending server sample is dropped too
    s = agg.snapshot()
    assert s.servers == () and s.down == (("gpu", "no NVIDIA driver"),)


def test_the_server_process_found_again_clears_its_error():
    agg = Aggregator()
    feed(agg, [SourceDown(None, T0, "server-process", "no process listens on port 40099 yet")])
    assert agg.snapshot().down == (("server-process", "no process listens on port 40099 yet"),)
    agg.add(ResourcesSampled(None, T0 + MS, 10.0, (10.0,), 1 << 30, 8 << 30, 300 << 20, 90.0))
    assert agg.snapshot().down == ()


def test_live_table_equals_the_stored_summary(tmp_path):
    """The same events through the writer and through the aggregator give the same numbers."""
    reqs = [FakeRequest(0, [50, 60], warmup=True)]
    for i in range(12):
        start = 300 * i
        reqs.append(FakeRequest(start, [start + 180 + 7 * i + 21 * k for k in range(6)],
                                end_ms=start + 300, n_tokens=1 + i % 3))  # fmt: skip
    reqs.append(FakeRequest(4000, [4100], end_ms=4200, fail="timeout"))
    reqs.append(FakeRequest(4300, [4400, 4420], server=ServerTimings(output_tokens=7)))
    path = tmp_path / "a.db"
    slo = Slo(ttft_ms=220, tpot_ms=20)
    from llmtop.storage.writer import RunInfo

    run_id = write_run(path, reqs, info=RunInfo(params={"slo": {"ttft_ms": 220, "tpot_ms": 20}}))
    stored = queries.run_summary(open_database(path), run_id)
    assert stored is not None
    agg = Aggregator(slo)
    for i, r in enumerate(reqs, start=1):
        feed(agg, request_events(run_id, i, T0, r))
    live = agg.snapshot().table
    o = stored.overall
    for name in ("ttft_ms", "tpot_ms", "e2e_ms", "decode_tps"):
        assert getattr(live, name) == pytest.approx(getattr(o, name)), name
    assert (live.ok, live.errors, live.warmup, live.output_tokens) == (
        o.ok,
        o.errors,
        o.warmup,
        o.output_tokens,
    )
    for name in ("req_per_s", "out_tok_per_s", "error_rate", "goodput"):
        assert getattr(live, name) == pytest.approx(getattr(o, name)), name
    assert sorted(agg.snapshot().itl_values) == pytest.approx(
        sorted(queries.metric_values(open_database(path), run_id, "itl_ms"))
    )


def test_add_from_another_thread_while_snapshotting():
    agg = Aggregator()
    n_requests, n_tokens = 300, 50
    done = threading.Event()

    def produce():
        for rid in range(1, n_requests + 1):
            chunks = [1000 * rid + 100 + k for k in range(n_tokens)]
            feed(agg, request(rid, 1000 * rid, chunks, chunks[-1] + 1))
        done.set()

    th = threading.Thread(target=produce)
    th.start()
    snaps = 0
    while not done.is_set():
        agg.snapshot()
        snaps += 1
    th.join()
    s = agg.snapshot()
    assert s.events == n_requests * (n_tokens + 2)
    assert s.table.ok == n_requests and s.table.output_tokens == n_requests * n_tokens
    assert len(s.itl_values) == min(MAX_ITL, n_requests * (n_tokens - 1)) and s.in_flight == ()
    assert snaps >= 1


def test_the_aggregator_does_not_load_textual():
    """It feeds the UI but belongs to collectors/: no UI library comes with it."""
    import subprocess
    import sys

    code = "import sys, llmtop.live.aggregate; print('textual' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
