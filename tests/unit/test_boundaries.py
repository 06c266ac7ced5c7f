"""The one-way flow of DESIGN.md, checked on the source: app -> scenarios -> collectors -> storage.

Parsed with ast rather than a linter because the package maps repository folders into the
``llmtop`` namespace, which import-graph tools do not follow.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# area -> llmtop areas it may import (besides itself and the llmtop root package)
ALLOWED: dict[str, set[str]] = {
    "storage": {"collectors.events", "collectors.metrics", "collectors"},
    "collectors": {"storage"},
    "scenarios": {"collectors", "storage"},
    "engine": set(),
    "themes": set(),
}
FORBIDDEN_THIRD_PARTY: dict[str, set[str]] = {
    "storage": {"textual", "httpx", "torch"},
    "collectors": {"textual", "torch"},
    "scenarios": {"textual", "torch"},
    "engine": {"textual", "httpx", "sqlite_utils", "aiohttp"},
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def area_files(area: str) -> list[Path]:
    return sorted((ROOT / area).rglob("*.py"))


@pytest.mark.parametrize("area", sorted(ALLOWED))
def test_area_imports_only_what_it_may(area):
    bad = []
    for path in area_files(area):
        for name in imports_of(path):
            if name.startswith("llmtop."):
                target = name.removeprefix("llmtop.")
                top = target.split(".")[0]
                if top in (area, "errors", "__version__"):
                    continue
                if area == "engine" or not any(
                    target == a or target.startswith(a + ".") for a in ALLOWED[area]
                ):
                    bad.append(f"{path.relative_to(ROOT)} imports {name}")
            elif name.split(".")[0] in FORBIDDEN_THIRD_PARTY.get(area, set()):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_widgets_do_no_io():
    for path in area_files("app/widgets"):
        for name in imports_of(path):
            assert name.split(".")[0] not in {
                "httpx",
                "sqlite_utils",
                "sqlite3",
                "psutil",
                "pynvml",
                "torch",
                "aiohttp",
            }, (path, name)
            assert not name.startswith("llmtop.storage"), (path, name)


@pytest.mark.parametrize(
    "module",
    [
        "llmtop.collectors.events",
        "llmtop.collectors.metrics",
        "llmtop.storage.writer",
        "llmtop.storage.queries",
        "llmtop.storage.export",
    ],
)
def test_non_ui_modules_do_not_load_textual(module):
    code = f"import sys, {module}; print('textual' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
