"""A stored run's report or a comparison, as the rich renderables the report builders made."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.text import Text
from textual.app import RenderResult
from textual.reactive import reactive
from textual.widget import Widget


class ReportView(Widget):
    """Renders what it is given, top to bottom; a line of text while there is nothing yet."""

    DEFAULT_CSS = """
    ReportView { height: auto; }
    """

    items: reactive[tuple[RenderableType, ...]] = reactive(tuple, layout=True)
    """Tables, rules and charts built for this widget's width (by the screen's worker)."""
    placeholder: reactive[str] = reactive("loading…", layout=True)
    """Shown while ``items`` is empty."""

    def render(self) -> RenderResult:
        if not self.items:
            return Text(self.placeholder, style="dim")
        return Group(*self.items)
