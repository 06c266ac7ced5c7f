"""A database with one stored run of every built-in scenario (session-wide, read-only)."""

from __future__ import annotations

import pytest
from report.scenario_runs import SCENARIOS, write_scenario_run


@pytest.fixture(scope="session")
def scenario_db(tmp_path_factory):
    """``(path, {scenario: run_id})``: one run per built-in scenario, fixed data."""
    path = tmp_path_factory.mktemp("report") / "scenarios.db"
    ids = {name: write_scenario_run(path, name) for name in SCENARIOS}
    return path, ids
