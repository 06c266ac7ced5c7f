"""Helpers for report tests: render rich things to plain text, read a summary table back."""

from __future__ import annotations

import io
import re

from rich.console import Console, RenderableType


def plain(*items: RenderableType, width: int = 140) -> str:
    """What a pipe would get: no colour codes."""
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None, force_terminal=False)
    for item in items:
        console.print(item)
    return out.getvalue()


def table_cells(text: str, n_columns: int) -> dict[tuple[str, str], list[str]]:
    """``{(section, label): [cell per column]}`` from a rendered summary table.

    Columns are separated by at least two spaces; a section name appears only on its first row.
    """
    cells: dict[tuple[str, str], list[str]] = {}
    section = ""
    for line in text.splitlines():
        if not line.strip() or set(line.strip()) <= set("─━ "):
            continue
        indent = len(line) - len(line.lstrip())
        parts = re.split(r"\s{2,}", line.strip())
        if len(parts) < n_columns + 1:
            continue
        values = parts[-n_columns:]
        names = parts[:-n_columns]
        if len(names) == 2:
            section, label = names
        elif len(names) == 1 and indent > 3:
            label = names[0]
        else:
            continue
        cells[(section, label)] = values
    return cells
