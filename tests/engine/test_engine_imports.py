"""The engine's imports, read from its source with ``ast``: no cycles, and nothing of llmtop
outside ``llmtop.engine`` (the engine is a separate program; see DESIGN.md's layout table).

Imports inside functions count too: a lazy import that closes a cycle hides it from Python at
start-up, not from the next reader. The package maps ``engine/`` to ``llmtop.engine``
(setuptools package-dir), so module names are built from the folder, not from sys.path.
"""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "engine"
PACKAGE = "llmtop.engine"


def module_name(path: Path) -> str:
    rel = path.relative_to(ENGINE).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([PACKAGE, *parts])


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in the file, as absolute dotted names.

    ``from pkg import name`` counts as ``pkg.name`` when that is a module of the engine (it
    imports the submodule), else as ``pkg``.
    """
    here = module_name(path)
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = here.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                mod = ".".join([*base, *([node.module] if node.module else [])])
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{alias.name}" for alias in node.names)
    return out


def engine_graph() -> dict[str, set[str]]:
    """Module -> the engine modules it imports."""
    files = {module_name(p): p for p in sorted(ENGINE.rglob("*.py"))}
    return {
        name: {m for m in imported(path) if m in files and m != name}
        for name, path in files.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle (its modules in import order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_scan_sees_the_engine_and_its_edges():
    graph = engine_graph()
    assert f"{PACKAGE}.loader" in graph and f"{PACKAGE}.native" in graph
    assert f"{PACKAGE}.cache_dir" in graph[f"{PACKAGE}.native"]
    assert f"{PACKAGE}.native" in graph[f"{PACKAGE}.block_matmul"]  # `from pkg import module`


def test_find_cycle_finds_a_planted_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_engine_has_no_import_cycle():
    assert find_cycle(engine_graph()) is None


def test_the_engine_imports_nothing_of_llmtop_but_itself():
    outside = {
        (module_name(path), mod)
        for path in ENGINE.rglob("*.py")
        for mod in imported(path)
        if (mod == "llmtop" or mod.startswith("llmtop."))
        and not (mod == PACKAGE or mod.startswith(PACKAGE + "."))
    }
    assert not outside, sorted(outside)
