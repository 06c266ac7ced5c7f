"""Subcommands whose issue is still open: they exist in --help and say so when run."""

from __future__ import annotations

import click

from llmtop.core.errors import UsageError


def not_yet(what: str, issue: int) -> None:
    raise UsageError(f"{what} is not yet available in this version of llmtop (issue {issue})")


def _stub(name: str, help_text: str, issue: int) -> click.Command:
    @click.command(
        name=name,
        help=help_text,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )
    def command() -> None:
        not_yet(f"'llmtop {name}'", issue)

    return command


COMMANDS: list[click.Command] = []
