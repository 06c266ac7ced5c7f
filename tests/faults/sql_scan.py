"""A static check that every SQL statement llmtop runs is fixed text plus ``?`` parameters.

Used by test_faults_security.py. It parses every module of the package (ast) and looks at each
call that takes SQL: ``execute``, ``executemany``, ``executescript`` (sqlite3 and sqlite-utils),
``query``, and sqlite-utils' ``rows_where``, ``count_where``, ``delete_where``,
``pks_and_rows_where`` (their ``where``) and ``create_view`` (its ``sql``). The SQL argument must
be *trusted*, which means built only from:

- literals (strings, numbers);
- names whose every binding is trusted: module-level constants (in this module or imported from
  another llmtop module), locals assigned only trusted values (``=``, ``+=``, ``.append(...)``,
  ``.extend(...)``), and loop or comprehension variables over a trusted iterable (a literal
  tuple of tuples is followed position by position, so ``for col, value in (("model", model),)``
  trusts ``col`` and not ``value``);
- a parameter (or any name) checked against a trusted allow-list where it is used: inside
  ``if name in ALLOWED:`` (or its ``elif``), or after ``if name not in ALLOWED: raise ...``;
- f-strings, ``+``, ``*``, ``%``, ``.format(...)``, ``.join(...)``, ``x if c else y``, indexing,
  ``len()``/``int()``/``float()`` and calls of llmtop functions whose every ``return`` is trusted,
  over trusted parts only.

Anything else interpolated into SQL (a parameter, an attribute, a call's result) is a finding.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SQL_CALLS: dict[str, tuple[int, str]] = {
    "execute": (0, "sql"),
    "executemany": (0, "sql"),
    "executescript": (0, "sql"),
    "query": (0, "sql"),
    "rows_where": (0, "where"),
    "count_where": (0, "where"),
    "delete_where": (0, "where"),
    "pks_and_rows_where": (0, "where"),
    "create_view": (1, "sql"),
}
"""Method name -> (position, keyword) of its SQL argument."""
SAFE_BUILTINS = frozenset({"len", "int", "float", "bool", "sorted", "list", "tuple", "reversed"})
"""Calls whose result is trusted when their arguments are (numbers, or reordered trusted items)."""
STR_METHODS = frozenset({"join", "format", "strip", "lower", "upper", "replace"})
_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
_COMPS = (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)


@dataclass(frozen=True, slots=True)
class Finding:
    """One SQL argument built from something untrusted."""

    path: str
    line: int
    call: str
    untrusted: str
    """The piece that is not trusted, as source text."""

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.call}(...) interpolates {self.untrusted}"


@dataclass
class Module:
    """One parsed module: its tree, parents, top-level bindings, imports and functions."""

    name: str
    path: str
    tree: ast.Module
    parents: dict[int, ast.AST] = field(default_factory=dict)
    imports: dict[str, tuple[str, str]] = field(default_factory=dict)
    functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for node in ast.walk(self.tree):
            for child in ast.iter_child_nodes(node):
                self.parents[id(child)] = node
        for stmt in self.tree.body:
            if isinstance(stmt, ast.ImportFrom) and stmt.module and stmt.level == 0:
                for alias in stmt.names:
                    self.imports[alias.asname or alias.name] = (stmt.module, alias.name)
            elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.functions[stmt.name] = stmt


class Scanner:
    """Trust analysis over a set of modules (so imported constants and helpers resolve)."""

    def __init__(self, modules: dict[str, Module]) -> None:
        self.modules = modules
        self._busy: set[tuple[int, str]] = set()
        self.checked: list[tuple[str, int, bool]] = []
        """Every SQL call looked at: path, line, and whether its SQL is built (not a literal)."""

    # --- entry points ---

    def findings(self, mod: Module) -> Iterator[Finding]:
        for node in ast.walk(mod.tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            where = SQL_CALLS.get(node.func.attr)
            if where is None:
                continue
            pos, keyword = where
            arg = node.args[pos] if len(node.args) > pos else None
            arg = next((k.value for k in node.keywords if k.arg == keyword), arg)
            if arg is None:
                continue
            self.checked.append((mod.path, node.lineno, not isinstance(arg, ast.Constant)))
            bad = self.untrusted(arg, mod)
            if bad is not None:
                yield Finding(mod.path, node.lineno, ast.unparse(node.func), bad)

    def untrusted(self, node: ast.AST, mod: Module) -> str | None:
        """``None`` if ``node`` is trusted, else the source of the first untrusted piece."""
        match node:
            case ast.Constant():
                return None
            case ast.JoinedStr(values=values):
                return self._first(values, mod)
            case ast.FormattedValue(value=value):
                return self.untrusted(value, mod)
            case ast.BinOp(left=left, right=right):
                return self._first([left, right], mod)
            case ast.Tuple(elts=elts) | ast.List(elts=elts) | ast.Set(elts=elts):
                return self._first(elts, mod)
            case ast.Dict(keys=keys, values=values):
                return self._first([k for k in keys if k is not None] + values, mod)
            case ast.IfExp(body=body, orelse=orelse):
                return self._first([body, orelse], mod)
            case ast.Subscript(value=value):
                return self.untrusted(value, mod)  # an item of a trusted container
            case ast.Starred(value=value):
                return self.untrusted(value, mod)
            case ast.ListComp() | ast.SetComp() | ast.GeneratorExp():
                return self.untrusted(node.elt, mod)  # its targets are checked as names
            case ast.Call():
                return self._call(node, mod)
            case ast.Name(id=name):
                return self._name(node, name, mod)
        return ast.unparse(node)

    # --- the parts ---

    def _first(self, nodes: list[ast.expr], mod: Module) -> str | None:
        return next((bad for n in nodes if (bad := self.untrusted(n, mod)) is not None), None)

    def _call(self, node: ast.Call, mod: Module) -> str | None:
        args = [*node.args, *(k.value for k in node.keywords)]
        func = node.func
        if isinstance(func, ast.Name) and func.id in SAFE_BUILTINS:
            return None if func.id == "len" else self._first(args, mod)
        if isinstance(func, ast.Attribute) and func.attr in STR_METHODS:
            return self._first([func.value, *args], mod)
        if isinstance(func, ast.Name):
            target = self._function(func.id, mod)
            if target is not None:
                fmod, fdef = target
                returns = [
                    r.value
                    for r in ast.walk(fdef)
                    if isinstance(r, ast.Return) and r.value is not None and _owner(r, fmod) is fdef
                ]
                key = (id(fdef), "<return>")
                if key in self._busy:
                    return None
                self._busy.add(key)
                try:
                    bad = self._first(returns, fmod) if returns else ast.unparse(node)
                finally:
                    self._busy.discard(key)
                return None if bad is None else ast.unparse(node)
        return ast.unparse(node)

    def _function(
        self, name: str, mod: Module
    ) -> tuple[Module, ast.FunctionDef | ast.AsyncFunctionDef] | None:
        if name in mod.functions:
            return mod, mod.functions[name]
        source = mod.imports.get(name)
        if source and source[0] in self.modules:
            other = self.modules[source[0]]
            if source[1] in other.functions:
                return other, other.functions[source[1]]
        return None

    def _name(self, use: ast.Name, name: str, mod: Module) -> str | None:
        scope: ast.AST | None = use
        while scope is not None:
            scope = mod.parents.get(id(scope))
            if isinstance(scope, _COMPS):
                for gen in scope.generators:
                    bound = _bound_from(gen.target, gen.iter, name)
                    if bound is not None:
                        return self._first(bound, mod)
            elif isinstance(scope, _FUNCS):
                if _guarded(use, name, scope, mod, self):
                    return None
                bindings = _bindings(scope, name, mod)
                if bindings is not None:
                    return self._check_bindings(scope, name, bindings, mod)
        bindings = _bindings(mod.tree, name, mod)
        if bindings is not None:
            return self._check_bindings(mod.tree, name, bindings, mod)
        source = mod.imports.get(name)
        if source and source[0] in self.modules:
            other = self.modules[source[0]]
            found = _bindings(other.tree, source[1], other)
            if found is not None:
                return self._check_bindings(other.tree, source[1], found, other)
        return name

    def _check_bindings(
        self, scope: ast.AST, name: str, values: list[ast.expr | None], mod: Module
    ) -> str | None:
        """The first untrusted piece among the bindings of ``name`` (a ``None`` binding: a parameter)."""
        key = (id(scope), name)
        if key in self._busy:
            return None  # a binding that refers to itself (sql = sql + ...): the others decide
        self._busy.add(key)
        try:
            for v in values:
                bad = name if v is None else self.untrusted(v, mod)
                if bad is not None:
                    return bad
            return None
        finally:
            self._busy.discard(key)


def _owner(node: ast.AST, mod: Module) -> ast.AST | None:
    """The function a node belongs to (``None`` at module level)."""
    p = mod.parents.get(id(node))
    while p is not None and not isinstance(p, _FUNCS):
        p = mod.parents.get(id(p))
    return p


def _bound_from(target: ast.expr, iterable: ast.expr, name: str) -> list[ast.expr] | None:
    """What a loop target binds ``name`` to: the iterable, or (for a tuple target over a literal
    sequence of tuples) the items at the name's position. ``None`` if it does not bind it."""
    if isinstance(target, ast.Name):
        return [iterable] if target.id == name else None
    if not isinstance(target, (ast.Tuple, ast.List)):
        return None
    for i, elt in enumerate(target.elts):
        if isinstance(elt, ast.Name) and elt.id == name:
            if isinstance(iterable, (ast.Tuple, ast.List)) and all(
                isinstance(e, (ast.Tuple, ast.List)) and len(e.elts) == len(target.elts)
                for e in iterable.elts
            ):
                return [e.elts[i] for e in iterable.elts]  # type: ignore[attr-defined]
            return [iterable]
    return None


def _bindings(scope: ast.AST, name: str, mod: Module) -> list[ast.expr | None] | None:
    """Every value ``name`` is bound to directly in ``scope`` (not in nested functions); ``None``
    in the list for a parameter or another binding we cannot follow; ``None`` if never bound."""
    out: list[ast.expr | None] = []
    found = False
    if isinstance(scope, _FUNCS):
        a = scope.args
        params = [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]
        if any(p is not None and p.arg == name for p in params):
            found = True
            out.append(None)
    owner = scope if isinstance(scope, _FUNCS) else None
    for node in ast.walk(scope):
        if _owner(node, mod) is not owner:  # bound in a nested function: another scope
            continue
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name) and t.id == name:
                    found = True
                    out.append(node.value)
                elif isinstance(t, ast.Tuple) and any(
                    isinstance(e, ast.Name) and e.id == name for e in t.elts
                ):
                    found = True
                    if isinstance(node.value, ast.Tuple) and len(node.value.elts) == len(t.elts):
                        i = next(
                            i
                            for i, e in enumerate(t.elts)
                            if isinstance(e, ast.Name) and e.id == name
                        )
                        out.append(node.value.elts[i])
                    else:
                        out.append(None)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)) and isinstance(node.target, ast.Name):
            if node.target.id == name and node.value is not None:
                found = True
                out.append(node.value)
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            bound = _bound_from(node.target, node.iter, name)
            if bound is not None:
                found = True
                out.extend(bound)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                if isinstance(item.optional_vars, ast.Name) and item.optional_vars.id == name:
                    found = True
                    out.append(None)
        elif isinstance(node, ast.NamedExpr) and node.target.id == name:
            found = True
            out.append(node.value)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == name
            and node.func.attr in ("append", "extend", "insert")
        ):
            out.extend(node.args[-1:])  # a list built up: every item must be trusted
    return out if found else None


def _membership(test: ast.expr, name: str, op: type[ast.cmpop]) -> ast.expr | None:
    """The container of ``name in C`` (or ``not in``) if ``test`` is exactly that."""
    if (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == name
        and len(test.ops) == 1
        and isinstance(test.ops[0], op)
    ):
        return test.comparators[0]
    return None


def _rejects(stmt: ast.stmt, name: str, mod: Module, scanner: Scanner) -> bool:
    """``if name not in C: ... raise`` (or ``return``) with a trusted ``C``."""
    return (
        isinstance(stmt, ast.If)
        and bool(stmt.body)
        and isinstance(stmt.body[-1], (ast.Raise, ast.Return))
        and (c := _membership(stmt.test, name, ast.NotIn)) is not None
        and scanner.untrusted(c, mod) is None
    )


def _guarded(use: ast.AST, name: str, func: ast.AST, mod: Module, scanner: Scanner) -> bool:
    """``name`` is checked against a trusted allow-list on every path to ``use``: inside the body
    of ``if name in C:`` (an ``elif`` too), or after ``if name not in C: raise`` in an enclosing
    block of the same function."""
    child, node = use, mod.parents.get(id(use))
    while node is not None:
        if isinstance(node, ast.If) and any(s is child for s in node.body):
            c = _membership(node.test, name, ast.In)
            if c is not None and scanner.untrusted(c, mod) is None:
                return True
        for field_name in ("body", "orelse", "finalbody"):
            block = getattr(node, field_name, None)
            if isinstance(block, list) and any(s is child for s in block):
                before = block[: next(i for i, s in enumerate(block) if s is child)]
                if any(_rejects(s, name, mod, scanner) for s in before):
                    return True
        if node is func:
            return False
        child, node = node, mod.parents.get(id(node))
    return False


def load_package(package_dirs: dict[str, Path]) -> dict[str, Module]:
    """Parse every ``.py`` under each package folder (``{"llmtop.storage": Path("storage")}``)."""
    modules: dict[str, Module] = {}
    for package, folder in package_dirs.items():
        for path in sorted(folder.glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            modules[name] = Module(name, str(path), tree)
    return modules


def scan_source(source: str, name: str = "planted") -> list[Finding]:
    """Findings in one module's source text (for testing the scanner itself)."""
    mod = Module(name, f"{name}.py", ast.parse(source))
    return list(Scanner({name: mod}).findings(mod))
