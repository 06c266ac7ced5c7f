"""A bug is still one line on stderr, with the traceback kept in a file for the report.

The bug is planted: ``llmtop runs`` with its query replaced by one that raises, run as the real
command in a subprocess (nothing else is changed).
"""

from __future__ import annotations

import os
import subprocess
import sys

from support.cli import assert_one_line_error

BUGGY_RUNS = """
import sys
from llmtop.app.cli import main
from llmtop.storage import queries

def broken(*args, **kwargs):
    return 1 / 0

queries.list_runs = broken
main(sys.argv[1:], prog_name="llmtop")
"""


def _run(tmp_path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BUGGY_RUNS, "--db", str(tmp_path / "x.db"), "runs"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "NO_COLOR": "1", "XDG_STATE_HOME": str(tmp_path / "state"), **env},
    )  # fmt: skip


def test_a_bug_is_one_line_and_its_traceback_goes_to_the_crash_log(tmp_path):
    proc = _run(tmp_path)
    log = tmp_path / "state" / "llmtop" / "log" / "crash.log"
    assert_one_line_error(proc, 1, "internal error: ZeroDivisionError: division by zero",
                          f"the traceback is in {log}")  # fmt: skip
    text = log.read_text()
    assert "Traceback" in text and "in broken" in text and "ZeroDivisionError" in text
    assert " runs" in text.splitlines()[0]  # the command line, for the report


def test_llmtop_debug_shows_the_traceback_in_place(tmp_path):
    proc = _run(tmp_path, LLMTOP_DEBUG="1")
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "ZeroDivisionError" in proc.stderr
