"""Run summaries, histograms and time series on runs with known timings."""

from __future__ import annotations

import pytest
from support.runs import FakeRequest, write_run

from llmtop.core.events import ServerTimings
from llmtop.core.metrics import Slo
from llmtop.storage import queries
from llmtop.storage.db import open_database
from llmtop.storage.writer import RunInfo


@pytest.fixture()
def run(tmp_path):
    """Two steps. 'short': 4 ok requests one after another with TTFT 100..400 ms, ITL 10 ms,
    one warm-up (excluded) and one HTTP error. 'long': 2 ok requests with 3-token chunks."""
    path = tmp_path / "q.db"
    reqs = [FakeRequest(0, [50, 60], step="short", warmup=True)]
    for i in range(4):
        start = 1000 * (i + 1)
        ttft = 100 * (i + 1)
        reqs.append(
            FakeRequest(
                start,
                [start + ttft + 10 * k for k in range(5)],
                end_ms=start + ttft + 45,
                step="short",
                server=ServerTimings(prompt_tokens=10 + i),
            )
        )
    reqs.append(FakeRequest(5000, [], end_ms=5010, step="short", fail="http_status"))
    for i in range(2):
        start = 6000 + 1000 * i
        reqs.append(FakeRequest(start, [start + 200, start + 260, start + 320], end_ms=start + 330,
                                step="long", n_tokens=3, concurrency=4))  # fmt: skip
    samples = [(t, cpu, mem) for t, cpu, mem in [(500, 90.0, 1), (1500, 10.0, 3 << 30),
                                                   (2500, 30.0, 5 << 30), (7500, 50.0, 2 << 30)]]  # fmt: skip
    info = RunInfo(name="q", backend="fake", model="m", scenario="basic",
                   params={"slo": {"ttft_ms": 250, "tpot_ms": 50}})  # fmt: skip
    run_id = write_run(path, reqs, info=info, samples=samples)
    return open_database(path), run_id


def test_step_summaries(run):
    db, run_id = run
    s = queries.run_summary(db, run_id)
    assert s is not None and [st.step for st in s.steps] == ["short", "long"]
    short, long = s.steps
    assert (short.n, short.ok, short.errors, short.warmup) == (5, 4, 1, 1)
    assert short.error_kinds == {"http_status": 1}
    assert short.ttft_ms.mean == pytest.approx(250.0)  # 100, 200, 300, 400
    assert short.ttft_ms.p50 == pytest.approx(250.0)
    assert short.ttft_ms.p90 == pytest.approx(370.0)  # position 2.7 between 300 and 400
    assert short.tpot_ms.mean == pytest.approx(10.0)  # 40 ms over 4 gaps
    assert short.itl_ms.n == 16 and short.itl_ms.mean == pytest.approx(10.0)
    assert short.output_tokens == 20 and short.prompt_tokens_mean == pytest.approx(11.5)
    # Window: first start 1000 ms to last end 5010 ms (the failed request counts in the window).
    assert short.duration_s == pytest.approx(4.010)
    assert short.req_per_s == pytest.approx(4 / 4.010)
    assert short.out_tok_per_s == pytest.approx(20 / 4.010)
    assert short.error_rate == pytest.approx(1 / 5)
    # SLO TTFT <= 250 ms, TPOT <= 50 ms: two of five judged requests are good.
    assert short.goodput == pytest.approx(2 / 5)
    # Resources inside the window only: the 90 % sample at 500 ms is before it.
    assert short.cpu_pct_mean == pytest.approx(20.0) and short.mem_used_peak == 5 << 30
    # 'long': 3 chunks of 3 tokens, 60 ms apart -> ITL 20 ms, TPOT 120 / 8 = 15 ms.
    assert long.output_tokens == 18 and long.concurrency == 4
    assert long.itl_ms.mean == pytest.approx(20.0) and long.itl_ms.n == 12
    assert long.tpot_ms.mean == pytest.approx(15.0)
    assert s.overall.n == 7 and s.overall.ok == 6 and s.slo == Slo(250, 50)


def test_summary_of_missing_run_is_none(run):
    db, _ = run
    assert queries.run_summary(db, 999) is None


def test_histogram_bins(run):
    db, run_id = run
    h = queries.histogram(db, run_id, "ttft_ms", bins=[0, 150, 250, 1000])
    # TTFTs: 100, 200, 300, 400 (short) and 200, 200 (long)
    assert h.counts == (1, 3, 2) and h.n == 6
    even = queries.histogram(db, run_id, "ttft_ms", bins=3)
    assert even.edges == pytest.approx((100, 200, 300, 400)) and sum(even.counts) == 6
    assert queries.histogram(db, run_id, "ttft_ms", step="long", bins=1).counts == (2,)
    itl = queries.histogram(db, run_id, "itl_ms", bins=[0, 15, 100])
    assert itl.counts == (16, 12)
    with pytest.raises(ValueError):
        queries.histogram(db, run_id, "ttft_ms", bins=[3, 1])
    with pytest.raises(ValueError):
        queries.histogram(db, run_id, "nonsense")


def test_time_series_relative_to_run_start(run):
    db, run_id = run
    ttft = queries.time_series(db, run_id, "ttft_ms")
    assert [round(t, 3) for t, _ in ttft[:2]] == [1.145, 2.245]
    assert [v for _, v in ttft[:2]] == pytest.approx([100.0, 200.0])
    cpu = queries.time_series(db, run_id, "cpu_pct", since_ns=None)
    assert [v for _, v in cpu] == [90.0, 10.0, 30.0, 50.0]


def test_list_runs_filters(tmp_path):
    path = tmp_path / "l.db"
    a = write_run(path, [FakeRequest(0, [1])], info=RunInfo(name="a", backend="ollama", model="x"))
    b = write_run(path, [FakeRequest(0, [1])], info=RunInfo(name="b", backend="engine", model="y"))
    db = open_database(path)
    assert [r.id for r in queries.list_runs(db)] == [b, a]
    assert [r.name for r in queries.list_runs(db, backend="ollama")] == ["a"]
    assert [r.name for r in queries.list_runs(db, model="y")] == ["b"]
    assert queries.last_run_id(db) == b
    assert queries.list_runs(db, limit=1)[0].n_requests == 1
