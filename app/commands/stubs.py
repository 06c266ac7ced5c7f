"""Subcommands whose issue is still open: they exist in --help and say so when run."""

from __future__ import annotations

import click

from llmtop.errors import UsageError


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


COMMANDS: list[click.Command] = [
    _stub("record", "Run a scenario against a server headless, and print a summary.", 5),
    _stub("report", "Summary table and terminal charts of one run.", 7),
    _stub("compare", "Runs side by side, with the change in each metric.", 7),
    _stub("scenarios", "The built-in scenarios and what they do.", 5),
    _stub("doctor", "What llmtop finds: servers, GPUs, torch, the model file, the database.", 5),
    _stub("serve", "Serve the in-repo engine behind Ollama- and OpenAI-compatible APIs.", 4),
]
