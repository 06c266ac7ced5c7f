"""Messages the widgets and screens send upward: what the user did, never data to draw."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message


@dataclass
class RunSelected(Message):
    """The user opened a run (Enter or a click in the runs table)."""

    run_id: int


@dataclass
class CompareRequested(Message):
    """The user asked to compare two runs, ``run_a`` being the baseline."""

    run_a: int
    run_b: int
