"""Type-check the whole package with mypy, through a tree it can follow.

The package maps repository folders into the ``llmtop`` namespace (pyproject's
``[tool.setuptools] package-dir``: ``llmtop.core`` is ``core/``...), which no type checker reads.
This script builds ``build/typecheck/llmtop`` from that same mapping, one symlink per area, and
runs mypy on it with the settings in ``[tool.mypy]``; errors name the real files' paths inside
the package (``llmtop/core/metrics.py``). A symlink tree rather than a strict editable install,
because that one must be rebuilt by hand after adding a module.

    python tools/typecheck.py          # exit status: mypy's
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / "build" / "typecheck"


def build_tree() -> Path:
    """``build/typecheck/llmtop`` with each area linked where the package puts it."""
    mapping: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"][
        "setuptools"
    ]["package-dir"]
    shutil.rmtree(TREE, ignore_errors=True)
    top = TREE / "llmtop"
    top.mkdir(parents=True)
    for module in (ROOT / mapping["llmtop"]).glob("*.py"):
        (top / module.name).symlink_to(module)
    # only the areas directly under llmtop: their sub-packages come with their folders
    for name, folder in mapping.items():
        if name.count(".") == 1:
            (top / name.split(".")[1]).symlink_to(ROOT / folder, target_is_directory=True)
    return top


def main() -> int:
    top = build_tree()
    cmd = [
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        str(ROOT / "pyproject.toml"),
        "-p",
        "llmtop",
    ]
    env = {**os.environ, "MYPYPATH": str(top.parent)}
    return subprocess.run(cmd, cwd=top.parent, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
