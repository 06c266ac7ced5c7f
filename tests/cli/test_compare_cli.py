"""`llmtop compare` as a user runs it, on stored runs with fixed timings."""

from __future__ import annotations

import json

import pytest
from report.scenario_runs import write_scenario_run
from support.cli import assert_one_line_error, run_llmtop


@pytest.fixture(scope="module")
def dbfile(tmp_path_factory):
    """Run 1 and 2: the same server; run 3: every ITL doubled."""
    path = tmp_path_factory.mktemp("ccli") / "c.db"
    write_scenario_run(path, "basic", label="base")
    write_scenario_run(path, "basic", label="again", phase=1)
    write_scenario_run(path, "basic", label="2x ITL", itl_scale=2.0, phase=2)
    return str(path)


def test_table_marks_noise_and_the_slowdown(dbfile):
    proc = run_llmtop("compare", "1", "2", "3", "--db", dbfile)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    tpot = next(line for line in lines if line.lstrip().startswith("TPOT ms"))
    assert "≈ same" in tpot and "✗ worse" in tpot
    ttft = next(line for line in lines if line.lstrip().startswith("TTFT ms"))
    assert "worse" not in ttft
    assert any(line.startswith("run 3 vs run 1: ") and "TPOT ms" in line for line in lines)
    assert any(line.startswith("run 2 vs run 1: 0 worse; 0 better") for line in lines)


def test_json_markdown_and_steps(dbfile):
    data = json.loads(run_llmtop("compare", "1", "3", "--json", "--db", dbfile).stdout)
    rows = {r["metric"]: r for r in data["comparisons"][0]["rows"]}
    assert data["baseline"] == 1 and rows["tpot_ms.p95"]["changes"][1]["verdict"] == "worse"
    assert rows["ttft_ms.p50"]["changes"][1]["verdict"] == "noise"
    md = run_llmtop("compare", "1", "3", "--markdown", "--db", dbfile).stdout
    assert "| metric | run 1 (base) | run 3 | change (run 3) |" in md
    steps = run_llmtop("compare", "1", "3", "--by-step", "--json", "--db", dbfile)
    assert [c["step"] for c in json.loads(steps.stdout)["comparisons"]] == [
        "short",
        "medium",
        "long",
    ]
    one = json.loads(
        run_llmtop("compare", "1", "3", "--step", "long", "--json", "--db", dbfile).stdout
    )
    assert one["comparisons"][0]["step"] == "long"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["1"], "at least two runs"),
        (["1", "1"], "the ids repeat"),
        (["1", "99"], "no run with id 99"),
        (["1", "2", "--step", "nope"], "has no step 'nope'"),
        (["1", "2", "--json", "--markdown"], "choose one of --markdown and --json"),
    ],
)
def test_bad_input_is_one_line(dbfile, args, fragment):
    assert_one_line_error(run_llmtop("compare", *args, "--db", dbfile), 2, fragment)
