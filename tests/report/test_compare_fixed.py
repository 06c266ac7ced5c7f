"""Comparing stored runs with fixed timings: noise stays noise, a 2x ITL slowdown is worse."""

from __future__ import annotations

import pytest
from report.render import plain
from report.scenario_runs import write_scenario_run
from support.runs import FakeRequest, write_run

from llmtop.app.report.compare import load_comparison, shared_steps
from llmtop.app.report.compare_view import comparison_json, comparison_renderables
from llmtop.core.errors import UsageError
from llmtop.storage.db import open_readonly

LATENCY_SOURCES = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "decode_tps")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same server twice (different jitter phase), then with every ITL doubled, then a
    different scenario."""
    path = tmp_path_factory.mktemp("compare") / "c.db"
    ids = {
        "base": write_scenario_run(path, "basic", label="base"),
        "same": write_scenario_run(path, "basic", label="again", phase=1),
        "slow": write_scenario_run(path, "basic", label="2x ITL", itl_scale=2.0, phase=2),
        "other": write_scenario_run(path, "concurrency", label="other"),
    }
    db = open_readonly(path)
    yield db, ids
    db.close()


def verdicts(comparison, run_index=1):
    return {row.spec.key: row.changes[run_index].verdict for row in comparison.rows}


def test_two_runs_of_the_same_server_are_within_noise(runs):
    db, ids = runs
    c = load_comparison(db, [ids["base"], ids["same"]])
    v = verdicts(c)
    assert set(v.values()) == {"noise"}, v
    keys = set(v)
    assert {"ttft_ms.p50", "ttft_ms.p95", "e2e_ms.p95", "tpot_ms.p50", "itl_ms.p95"} <= keys
    for row in c.rows:
        if row.spec.source in LATENCY_SOURCES:
            lo, hi = row.changes[1].interval
            assert lo <= 0 <= hi, row.spec.key


def test_doubled_itl_is_worse_and_ttft_is_not(runs):
    db, ids = runs
    c = load_comparison(db, [ids["base"], ids["slow"]])
    v = verdicts(c)
    for key in ("tpot_ms.mean", "tpot_ms.p50", "tpot_ms.p95", "itl_ms.p50", "itl_ms.p95",
                "e2e_ms.p50", "e2e_ms.p95", "decode_tps.mean", "out_tok_per_s"):  # fmt: skip
        assert v[key] == "worse", key
    for key in ("ttft_ms.mean", "ttft_ms.p50", "ttft_ms.p95", "error_rate", "goodput"):
        assert v[key] == "noise", key
    rows = {row.spec.key: row for row in c.rows}
    assert rows["tpot_ms.p50"].changes[1].relative == pytest.approx(1.0, abs=0.1)
    assert rows["decode_tps.mean"].changes[1].relative == pytest.approx(-0.5, abs=0.05)
    lo, _ = rows["itl_ms.p50"].changes[1].interval
    assert lo > 0  # the whole interval of the difference lies above zero


def test_higher_is_better_for_throughput(runs):
    db, ids = runs
    v = verdicts(load_comparison(db, [ids["slow"], ids["base"]]))
    assert v["decode_tps.mean"] == "better" and v["tpot_ms.p50"] == "better"


def test_three_runs_each_against_the_first(runs):
    db, ids = runs
    c = load_comparison(db, [ids["base"], ids["same"], ids["slow"]])
    assert [r.id for r in c.runs] == [ids["base"], ids["same"], ids["slow"]]
    assert all(row.changes[0] is None for row in c.rows)
    assert verdicts(c, 1)["tpot_ms.p50"] == "noise"
    assert verdicts(c, 2)["tpot_ms.p50"] == "worse"
    text = plain(*comparison_renderables([c]), width=160)
    assert "≈ same" in text and "✗ worse" in text
    assert f"run {ids['slow']} vs run {ids['base']}:" in text


def test_output_is_stable_and_serializable(runs):
    db, ids = runs
    a = comparison_json([load_comparison(db, [ids["base"], ids["slow"]])])
    b = comparison_json([load_comparison(db, [ids["base"], ids["slow"]])])
    assert a == b  # seeded bootstrap: the same verdicts and intervals every time
    row = next(r for r in a["comparisons"][0]["rows"] if r["metric"] == "itl_ms.p95")
    assert row["changes"][0] is None and row["changes"][1]["verdict"] == "worse"


def test_steps_and_notes(runs):
    db, ids = runs
    assert shared_steps(db, [ids["base"], ids["slow"]]) == ["short", "medium", "long"]
    assert shared_steps(db, [ids["base"], ids["other"]]) == []
    c = load_comparison(db, [ids["base"], ids["slow"]], step="long")
    assert c.step == "long" and verdicts(c)["tpot_ms.p50"] == "worse"
    with pytest.raises(UsageError, match=r"has no step 'nope'.*short, medium, long"):
        load_comparison(db, [ids["base"], ids["slow"]], step="nope")
    mixed = load_comparison(db, [ids["base"], ids["other"]])
    assert any("differ in scenario: basic vs concurrency" in n for n in mixed.notes)
    with pytest.raises(UsageError, match="no run with id 999"):
        load_comparison(db, [ids["base"], 999])
    with pytest.raises(UsageError, match="at least two runs"):
        load_comparison(db, [ids["base"]])


def test_a_real_but_small_change_is_noise_below_the_threshold(tmp_path):
    # TTFT 100 ms vs 103 ms, 40 requests each with a +-1 ms pattern: the interval excludes zero,
    # but 3 % is under the 5 % default, so only a 1 % threshold calls it worse.
    path = tmp_path / "t.db"

    def run(ttft):
        reqs = []
        for i in range(40):
            start = i * 500
            first = start + ttft + (i % 3 - 1)
            reqs.append(FakeRequest(start, [first, first + 20, first + 40], end_ms=first + 41))
        return write_run(path, reqs)

    a, b = run(100), run(103)
    db = open_readonly(path)
    default = {r.spec.key: r.changes[1] for r in load_comparison(db, [a, b]).rows}
    assert default["ttft_ms.mean"].verdict == "noise"
    assert default["ttft_ms.mean"].reason == "below threshold"
    assert default["ttft_ms.mean"].interval[0] > 0
    strict = {r.spec.key: r.changes[1] for r in load_comparison(db, [a, b], threshold=0.01).rows}
    assert strict["ttft_ms.mean"].verdict == "worse"
    assert strict["tpot_ms.mean"].verdict == "noise"


def test_a_large_change_the_spread_covers_is_not_significant_never_within_noise():
    """-60 % with an interval spanning zero: the words must not contradict the figure."""
    from llmtop.app.report.compare import SPECS, Change, Row
    from llmtop.app.report.compare_view import change_text

    spec = next(s for s in SPECS if s.key == "ttft_ms.p50")
    unsure = Change(-60.0, -0.6, (-150.0, 20.0), "noise", "interval contains zero")
    small = Change(-1.0, -0.01, (-3.0, 1.0), "noise", "below threshold")
    row = Row(spec, (100.0, 40.0), (None, unsure))
    assert change_text(row, unsure) == "-60.0% ? not significant"
    assert change_text(row, small) == "-1.0% ≈ same"


def test_compare_names_the_setup_differences_and_not_the_engines_port(tmp_path):
    """Two engine runs at concurrency 1 and 4: the note says concurrency (which moves every
    latency), not the random port llmtop picked for each engine."""
    from support.runs import FakeRequest, write_run

    from llmtop.app.report.compare import load_comparison
    from llmtop.scenarios.model import Prompt, Scenario, Step
    from llmtop.storage.db import open_readonly
    from llmtop.storage.writer import RunInfo

    path = tmp_path / "setup.db"
    for port, conc in ((40001, 1), (40099, 4)):
        prompt = Prompt("short", "What is AI?")
        scenario = Scenario("custom", (Step("default", (prompt,), concurrency=conc),))
        info = RunInfo(name=f"c{conc}", scenario="custom", backend="engine", model="smollm2",
                       base_url=f"http://127.0.0.1:{port}", params=scenario.params())  # fmt: skip
        write_run(path, [FakeRequest(0, [100, 120]), FakeRequest(10, [110, 130])], info=info)
    notes = load_comparison(open_readonly(path), [1, 2]).notes
    assert "the runs differ in concurrency: 1 vs 4, which moves the numbers" in notes
    assert not any("URL" in n for n in notes), notes
