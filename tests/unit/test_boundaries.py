"""The one-way flow of DESIGN.md's layout table, checked on the source.

    app -> recorder -> (collectors, storage, live, scenarios) -> core;  engine and themes apart

Parsed with ast (every import, inside functions too, so a lazy import cannot hide an edge)
rather than with a linter, because the package maps repository folders into the ``llmtop``
namespace, which import-graph tools do not follow.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "collectors": {"core"},
    "storage": {"core"},
    "live": {"core"},
    "scenarios": {"core"},
    "recorder": {"core", "collectors", "storage", "live", "scenarios"},
    "app": {"core", "collectors", "storage", "live", "scenarios", "recorder", "themes", "engine"},
    "themes": {"core"},
    "engine": set(),
}
"""area -> the llmtop areas it may import (besides itself). ``app`` may import every area (it
reaches the engine only to start ``serve``); nothing imports ``app``."""
ROOT_PACKAGE_OK = {"collectors", "storage", "live", "scenarios", "recorder", "app", "themes"}
"""Areas that may read ``llmtop.__version__`` (core and the engine import nothing of llmtop)."""
FORBIDDEN_THIRD_PARTY: dict[str, set[str]] = {
    "core": {"textual", "rich", "httpx", "aiohttp", "sqlite_utils", "sqlite3", "torch", "psutil"},
    "storage": {"textual", "httpx", "aiohttp", "torch"},
    "collectors": {"textual", "torch", "sqlite_utils", "sqlite3"},
    "live": {"textual", "httpx", "aiohttp", "sqlite_utils", "sqlite3", "torch"},
    "scenarios": {"textual", "torch", "httpx", "aiohttp", "sqlite_utils"},
    "recorder": {"textual", "torch", "sqlite_utils"},
    "app": {"sqlite_utils"},
    "engine": {"textual", "httpx", "sqlite_utils", "aiohttp", "click", "rich"},
}


def imports_of(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports, with ``from X import y`` also as ``X.y``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (write it absolute)"
            if node.module:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def area_files(area: str) -> list[Path]:
    return sorted((ROOT / area).rglob("*.py"))


def module_of(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    if parts and parts[0] == "llmtop":
        parts = parts[1:]
    return ".".join(["llmtop", *parts])


def test_the_table_names_every_area():
    """A new top-level folder of the package must get a row (or it would go unchecked)."""
    import tomllib

    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ]
    areas = {name.split(".")[1] for name in mapping if name.count(".") == 1}
    assert areas == set(ALLOWED)


@pytest.mark.parametrize("area", sorted(ALLOWED))
def test_area_imports_only_what_it_may(area):
    bad = []
    for path in area_files(area):
        for name in imports_of(path):
            if name == "llmtop" or name == "llmtop.__version__":
                if area not in ROOT_PACKAGE_OK:
                    bad.append(f"{path.relative_to(ROOT)} imports {name}")
            elif name.startswith("llmtop."):
                top = name.split(".")[1]
                if top != area and top not in ALLOWED[area]:
                    bad.append(f"{path.relative_to(ROOT)} imports {name}")
            elif name.split(".")[0] in FORBIDDEN_THIRD_PARTY.get(area, set()):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_nothing_imports_app():
    bad = [
        f"{path.relative_to(ROOT)} imports {name}"
        for area in ALLOWED
        if area != "app"
        for path in area_files(area)
        for name in imports_of(path)
        if name.startswith("llmtop.app")
    ]
    assert not bad, "\n".join(bad)


def _graph() -> dict[str, set[str]]:
    files = [p for area in [*ALLOWED, "llmtop"] for p in area_files(area)]
    modules = {module_of(p): p for p in files}
    graph: dict[str, set[str]] = {}
    for mod, path in modules.items():
        targets = set()
        for name in imports_of(path):
            # ``from llmtop.core import metrics`` names the module llmtop.core.metrics
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != mod:
                targets.add(name)
        graph[mod] = targets
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (a path that comes back to its start), or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_anywhere():
    """Package __init__ imports count as edges too; lazy imports inside functions as well."""
    graph = _graph()
    assert len(graph) > 100  # the walk found the package
    found = _cycle(graph)
    assert found is None, " -> ".join(found or [])


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
        "llmtop.core.events",
        "llmtop.core.metrics",
        "llmtop.core.fmt",
        "llmtop.live.aggregate",
        "llmtop.recorder.recording",
        "llmtop.storage.writer",
        "llmtop.storage.queries",
        "llmtop.storage.export",
    ],
)
def test_non_ui_modules_do_not_load_textual(module):
    code = f"import sys, {module}; print('textual' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


IMPORT_NAME = {
    "textual-plotext": "textual_plotext",
    "nvidia-ml-py": "pynvml",
    "sqlite-utils": "sqlite_utils",
    "prometheus-client": "prometheus_client",
}
"""Distribution names whose import name differs."""


def test_sqlite_utils_loads_without_numpy_and_numpy_still_imports():
    """storage/__init__.py loads sqlite-utils with numpy hidden (a tenth of a short record's
    CPU); only storage imports sqlite-utils, so every command gets that import, and numpy is
    importable afterwards (the engine's torch needs it)."""
    code = ("import sys; from llmtop.app.commands import record; print('numpy' in sys.modules); "
            "import numpy; print(numpy.zeros(2).sum() == 0)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_every_runtime_dependency_does_real_work():
    """A package in ``dependencies`` (and the engine extra) is imported by product code: none
    is installed for nothing (httpx-sse was, while the hot path reads SSE on aiohttp)."""
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [*project["dependencies"], *project["optional-dependencies"]["engine"]]
    used = set()
    for area in ALLOWED:
        for path in area_files(area):
            used.update(name.split(".")[0] for name in imports_of(path))
    unused = []
    for requirement in names:
        dist = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]
        module = IMPORT_NAME.get(dist, dist.replace("-", "_"))
        if module not in used:
            unused.append(dist)
    assert not unused, unused
