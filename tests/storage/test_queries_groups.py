"""Breakdowns of a run by request column, and per-request outcomes, on known timings."""

from __future__ import annotations

import pytest
from support.runs import FakeRequest, write_run

from llmtop.core.events import ServerTimings
from llmtop.storage import queries
from llmtop.storage.db import open_database
from llmtop.storage.writer import RunInfo


@pytest.fixture()
def run(tmp_path):
    """Two prompts at two temperatures: 'short' TTFT 100 ms, 'long' TTFT 300 ms; one warm-up
    with its own label and one failed 'long' request."""
    path = tmp_path / "g.db"
    reqs = [FakeRequest(0, [10, 20], prompt_label="warm", warmup=True)]
    for i, (label, ttft, temp) in enumerate(
        [("short", 100, 0.0), ("long", 300, 0.0), ("short", 100, 0.7), ("long", 300, 0.7)]
    ):
        start = 1000 * (i + 1)
        reqs.append(FakeRequest(start, [start + ttft, start + ttft + 20], end_ms=start + ttft + 25,
                                prompt_label=label, temperature=temp,
                                server=ServerTimings(prompt_tokens=5 if label == "short" else 50)))  # fmt: skip
    reqs.append(FakeRequest(6000, [], end_ms=6010, prompt_label="long", temperature=0.7,
                            fail="http_status"))  # fmt: skip
    info = RunInfo(name="g", params={"slo": {"ttft_ms": 200}})
    run_id = write_run(path, reqs, info=info)
    return open_database(path), run_id


def test_groups_by_prompt_in_order_of_first_request(run):
    db, run_id = run
    assert queries.distinct_values(db, run_id, "prompt_label") == ["short", "long"]
    groups = queries.group_summaries(db, run_id, "prompt_label")
    assert [k for k, _ in groups] == ["short", "long"]
    short, long = (s for _, s in groups)
    assert (short.n, short.ok, long.n, long.ok, long.errors) == (2, 2, 3, 2, 1)
    assert short.ttft_ms.mean == pytest.approx(100.0)
    assert long.ttft_ms.mean == pytest.approx(300.0)
    assert short.prompt_tokens_mean == pytest.approx(5.0)
    # goodput against the run's own SLO (TTFT <= 200 ms): every short request, no long one
    assert short.goodput == pytest.approx(1.0) and long.goodput == pytest.approx(0.0)


def test_groups_by_temperature_and_bad_column(run):
    db, run_id = run
    groups = dict(queries.group_summaries(db, run_id, "temperature"))
    assert set(groups) == {0.0, 0.7}
    assert groups[0.7].n == 3 and groups[0.7].errors == 1
    with pytest.raises(ValueError):
        queries.group_summaries(db, run_id, "error; drop table runs")
    with pytest.raises(ValueError):
        queries.distinct_values(db, run_id, "status")


def test_request_outcomes_skip_warmup_and_carry_the_slo_inputs(run):
    db, run_id = run
    out = queries.request_outcomes(db, run_id)
    assert [ok for ok, *_ in out] == [True, True, True, True, False]
    assert out[0][1] == pytest.approx(100.0) and out[0][3] == pytest.approx(125.0)
