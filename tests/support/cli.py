"""Run the real ``llmtop`` console script, as a user would, in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def llmtop_exe() -> str:
    exe = Path(sys.executable).parent / "llmtop"
    return str(exe) if exe.exists() else (shutil.which("llmtop") or "llmtop")


def run_llmtop(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
               input: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    full_env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [llmtop_exe(), *args], capture_output=True, text=True, env=full_env, timeout=timeout,
        input=input,
    )  # fmt: skip


def assert_one_line_error(
    proc: subprocess.CompletedProcess[str], code: int, *fragments: str
) -> None:
    """Exit code ``code``, exactly one line on stderr starting with 'llmtop:', no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("llmtop: "), lines[0]
    assert "Traceback" not in proc.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


SELF_CHECK = "llmtop: llmtop itself was the bottleneck"


def stderr_besides_self_check(stderr: str) -> str:
    """``stderr`` without llmtop's self-check warning (core/self_check.py). Against a fake server
    that answers in a millisecond, a busy machine makes llmtop's own loop lag a real share of
    TTFT, and the warning is then right; tests about other output leave it aside."""
    return "".join(
        line for line in stderr.splitlines(keepends=True) if not line.startswith(SELF_CHECK)
    )
