"""End to end: `llmtop record` against the fake server twice as it is and once with doubled
ITL, then `llmtop compare` and `llmtop report` on what was stored."""

from __future__ import annotations

import json

import pytest
from support.cli import run_llmtop
from support.servers import Behavior, FakeServer

pytestmark = pytest.mark.slow

TTFT_MS, ITL_MS, TOKENS = 60.0, 20.0, 12


def record(srv: FakeServer, db: str, name: str) -> None:
    proc = run_llmtop("record", "--backend", "ollama", "--url", srv.url, "--model", "m",
                      "--requests", "12", "--concurrency", "2", "--name", name, "--quiet",
                      "--db", db)  # fmt: skip
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Runs 1 and 2: the same server; run 3: every gap between tokens twice as long."""
    db = str(tmp_path_factory.mktemp("e2e") / "e2e.db")
    normal = Behavior(ttft_ms=TTFT_MS, itl_ms=ITL_MS, tokens=TOKENS)
    with FakeServer({"m": normal}, process=True) as srv:
        record(srv, db, "base")
        record(srv, db, "again")
        srv.configure(models={"m": Behavior(ttft_ms=TTFT_MS, itl_ms=2 * ITL_MS, tokens=TOKENS)})
        record(srv, db, "2x ITL")
    return db


def compare(db: str, *ids: str) -> dict[str, dict]:
    proc = run_llmtop("compare", *ids, "--json", "--db", db)
    assert proc.returncode == 0, proc.stderr
    return {r["metric"]: r for r in json.loads(proc.stdout)["comparisons"][0]["rows"]}


def test_same_server_twice_is_within_noise(recorded):
    rows = compare(recorded, "1", "2")
    for key in ("ttft_ms.mean", "ttft_ms.p50", "tpot_ms.p50", "itl_ms.p50", "e2e_ms.p50",
                "decode_tps.p50", "error_rate"):  # fmt: skip
        assert rows[key]["changes"][1]["verdict"] == "noise", (key, rows[key])
    # and the numbers are the server's: TTFT 60 ms, 20 ms between tokens
    assert rows["ttft_ms.p50"]["values"][0] == pytest.approx(TTFT_MS, abs=5)
    assert rows["itl_ms.p50"]["values"][0] == pytest.approx(ITL_MS, abs=2)


def test_doubled_itl_is_flagged_worse(recorded):
    rows = compare(recorded, "1", "3")
    for key in ("tpot_ms.mean", "tpot_ms.p50", "itl_ms.p50", "e2e_ms.p50", "decode_tps.mean",
                "out_tok_per_s"):  # fmt: skip
        assert rows[key]["changes"][1]["verdict"] == "worse", (key, rows[key])
    assert rows["itl_ms.p50"]["changes"][1]["relative"] == pytest.approx(1.0, abs=0.15)
    for key in ("ttft_ms.mean", "ttft_ms.p50"):
        assert rows[key]["changes"][1]["verdict"] == "noise", (key, rows[key])


def test_report_of_a_recorded_run(recorded, tmp_path):
    proc = run_llmtop("report", "--db", recorded, "--svg", str(tmp_path / "r.svg"))
    assert proc.returncode == 0, proc.stderr
    assert "report of run 3" in proc.stderr
    text = run_llmtop("report", "3", "--db", recorded).stdout
    assert "2x ITL" in text and "TPOT ms" in text and "E2E latency (ms), 12 requests" in text
