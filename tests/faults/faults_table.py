"""The fault tables of tests/faults/README.md, read by the tests that implement their rows.

README.md is the source: each ``## ...`` section names its test file in backticks, and each of
its table rows starts with a row id in backticks. A test module keeps its cases in a dict keyed by
row id and parametrizes over :func:`params`; :func:`check_rows` (called by a test in each module)
fails unless the README lists exactly those ids, in the same order, so a row without a test, or a
test without a row, cannot slip in.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).with_name("README.md")
_SECTION = re.compile(r"^## .*\(`(test_faults_\w+\.py)`\)")
_ROW = re.compile(r"^\|\s*`([a-z0-9-]+)`\s*\|(.*)\|\s*$")


@dataclass(frozen=True, slots=True)
class Row:
    """One row of a README table."""

    id: str
    cells: tuple[str, ...]
    """The cells after the id: what is done to llmtop, what llmtop does."""


def readme_sections(text: str | None = None) -> dict[str, list[Row]]:
    """Test file name -> its table rows, in README order."""
    text = README.read_text(encoding="utf-8") if text is None else text
    out: dict[str, list[Row]] = {}
    current: list[Row] | None = None
    for line in text.splitlines():
        if line.startswith("## "):
            m = _SECTION.match(line)
            current = out.setdefault(m.group(1), []) if m else None
            continue
        m = _ROW.match(line)
        if m and current is not None:
            cells = tuple(c.strip() for c in m.group(2).split("|"))
            current.append(Row(m.group(1), cells))
    return out


def rows_of(test_file: str) -> list[Row]:
    return readme_sections().get(test_file, [])


def params(cases: Mapping[str, Any]) -> list[Any]:
    """``pytest.param(case, id=row_id)`` for each case, in the dict's order (= the README's)."""
    return [pytest.param(case, id=row_id) for row_id, case in cases.items()]


def check_rows(test_file: str, cases: Mapping[str, Any]) -> None:
    """The README's table for ``test_file`` lists exactly ``cases``, in order, each described."""
    rows = rows_of(test_file)
    assert [r.id for r in rows] == list(cases), (
        f"README.md's table for {test_file} and the tested cases differ: "
        f"only in README {sorted({r.id for r in rows} - set(cases))}, "
        f"only tested {sorted(set(cases) - {r.id for r in rows})} (or the order differs)"
    )
    for r in rows:
        assert len(r.cells) >= 2 and all(r.cells), f"row {r.id}: every cell needs text"
