"""The metric definitions of DESIGN.md on hand-made timestamps, answers worked out here."""

from __future__ import annotations

import pytest

from llmtop.core import metrics
from llmtop.core.events import RequestFinished, ServerTimings
from llmtop.core.metrics import Slo

MS = 1_000_000
T0 = 5_000_000_000  # an arbitrary perf_counter origin


def finished(chunks_ms: list[float], end_ms: float, **server: int) -> RequestFinished:
    times = [T0 + int(c * MS) for c in chunks_ms]
    return RequestFinished(
        run_id=1,
        request_id=1,
        t_ns=T0 + int(end_ms * MS),
        t_start_ns=T0,
        t_first_ns=times[0] if times else None,
        t_last_ns=times[-1] if times else None,
        chunks=len(times),
        tokens_counted=len(times),
        server=ServerTimings(**server),  # type: ignore[arg-type]
    )


def test_single_token_chunks():
    # Chunks at 200, 220, 240, 260 ms; final line at 265 ms; 4 tokens.
    m = metrics.request_metrics(finished([200, 220, 240, 260], 265))
    assert m.output_tokens == 4
    assert m.ttft_ms == pytest.approx(200.0)  # t1 - t0
    assert m.e2e_ms == pytest.approx(265.0)  # tend - t0
    assert m.tpot_ms == pytest.approx(20.0)  # (260 - 200) / (4 - 1)
    assert m.decode_tps == pytest.approx(50.0)  # 3 tokens / 0.060 s
    assert m.overall_tps == pytest.approx(4 / 0.265)
    assert m.server_tps is None and m.server_ttft_ms is None and m.load_ms is None


def test_server_count_wins_over_counted_chunks():
    # 3 chunks on the wire, but the server says it generated 7 tokens in 0.2 s of decode.
    ev = finished([100, 140, 180], 190, output_tokens=7, eval_ns=200 * MS, prompt_eval_ns=50 * MS,
                  total_ns=250 * MS, load_ns=3 * MS)  # fmt: skip
    m = metrics.request_metrics(ev)
    assert m.output_tokens == 7
    assert m.tpot_ms == pytest.approx(80 / 6)  # (180 - 100) / (7 - 1)
    assert m.decode_tps == pytest.approx(6 / 0.080)
    assert m.server_tps == pytest.approx(35.0)  # 7 / 0.2
    assert m.server_ttft_ms == pytest.approx(50.0)
    assert m.server_ttft_share == pytest.approx(0.2)  # 50 / 250
    assert m.load_ms == pytest.approx(3.0)


def test_one_token_answer_has_no_tpot_and_empty_answer_no_ttft():
    one = metrics.request_metrics(finished([150], 155))
    assert one.ttft_ms == pytest.approx(150.0)
    assert one.tpot_ms is None and one.decode_tps is None
    empty = metrics.request_metrics(finished([], 30))
    assert empty.ttft_ms is None and empty.output_tokens == 0 and empty.overall_tps is None
    assert empty.e2e_ms == pytest.approx(30.0)


def test_itl_single_tokens():
    t = [T0 + c * MS for c in (200, 220, 250, 260)]
    assert metrics.itl_ms(t) == pytest.approx([20.0, 30.0, 10.0])


def test_itl_multi_token_chunks_spread_evenly():
    # Chunks of 1, 2 and 4 tokens: the 2-token chunk's 40 ms gap gives two 20 ms ITLs,
    # the 4-token chunk's 80 ms gap four 20 ms ITLs. The first chunk has no gap before it.
    t = [T0 + c * MS for c in (200, 240, 320)]
    assert metrics.itl_ms(t, [1, 2, 4]) == pytest.approx([20.0] * 6)


def test_itl_server_count_spread_over_chunks():
    # 4 chunks 40 ms apart, server says 8 tokens: 2 per chunk -> 6 ITLs of 20 ms.
    t = [T0 + c * MS for c in (100, 140, 180, 220)]
    assert metrics.itl_ms(t, total_tokens=8) == pytest.approx([20.0] * 6)
    # Uneven: 3 chunks, 4 tokens -> cumulative rounding gives 1, 2, 1 (round(4/3)=1, round(8/3)=3).
    assert metrics.itl_ms(t[:3], total_tokens=4) == pytest.approx([20.0, 20.0, 40.0])


def test_itl_needs_two_chunks():
    assert metrics.itl_ms([T0]) == []
    assert metrics.itl_ms([]) == []


def test_percentiles_linear_between_ranks():
    values = list(range(1, 101))  # 1..100
    s = metrics.summarize(values)
    assert s.n == 100 and s.mean == pytest.approx(50.5)
    assert s.p50 == pytest.approx(50.5)  # position 49.5
    assert s.p90 == pytest.approx(90.1)  # position 89.1
    assert s.p95 == pytest.approx(95.05)  # position 94.05
    assert s.p99 == pytest.approx(99.01)  # position 98.01
    assert (s.min, s.max) == (1, 100)
    assert metrics.percentile(values, 90) == pytest.approx(90.1)


def test_summarize_skips_none_and_handles_tiny_sets():
    assert metrics.summarize([]) == metrics.EMPTY_STATS
    assert metrics.summarize([None, None]).n == 0
    one = metrics.summarize([None, 7.0])
    assert (one.n, one.mean, one.p50, one.p99) == (1, 7.0, 7.0, 7.0)
    two = metrics.summarize([10.0, 20.0])
    assert two.p50 == pytest.approx(15.0) and two.p90 == pytest.approx(19.0)
    assert metrics.percentile([], 50) is None
    with pytest.raises(ValueError):
        metrics.percentile([1.0], 100)


def test_server_formulas():
    assert metrics.server_tps(100, 2 * 10**9) == pytest.approx(50.0)
    assert metrics.server_tps(None, 10) is None and metrics.server_tps(5, 0) is None
    assert metrics.server_ttft_share(250 * MS, 1000 * MS) == pytest.approx(0.25)


def test_rates():
    assert metrics.rate_per_s(10, T0, T0 + 2 * 10**9) == pytest.approx(5.0)
    assert metrics.rate_per_s(10, T0, T0) is None
    assert metrics.rate_per_s(10, None, T0) is None


def test_goodput():
    slo = Slo(ttft_ms=500, tpot_ms=50)
    reqs = [
        (True, 400.0, 40.0, 1000.0),  # good
        (True, 600.0, 40.0, 1000.0),  # TTFT too slow
        (True, 400.0, 60.0, 1000.0),  # TPOT too slow
        (False, None, None, None),  # failed
        (True, 400.0, None, 500.0),  # one-token answer: no TPOT to judge -> good
    ]
    assert metrics.goodput(slo, reqs) == pytest.approx(2 / 5)
    # Without objectives goodput is the success rate; an E2E objective is honoured too.
    assert metrics.goodput(Slo(), reqs) == pytest.approx(4 / 5)
    assert metrics.goodput(Slo(e2e_ms=800), reqs) == pytest.approx(1 / 5)
    assert metrics.goodput(slo, []) is None
    # An empty answer has no TTFT and fails a TTFT objective.
    assert not metrics.meets_slo(slo, True, None, None, 10.0)


def test_schedule_lag_is_sent_minus_due_in_ms():
    assert metrics.schedule_lag_ms(1_000_000, 3_500_000) == 2.5
    assert metrics.schedule_lag_ms(5_000_000, 4_000_000) == -1.0  # early: said as it is
