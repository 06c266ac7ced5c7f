"""The ``llmtop`` command: a click group whose subcommands live one per module in app/commands/.

Every expected failure is an ``LlmtopError``: printed as one line on stderr, never a traceback,
with its exit code (1, or 2 for usage). Ctrl-C exits 130.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from llmtop import __version__
from llmtop.app.commands import export, runs, stubs
from llmtop.errors import LlmtopError


def fail(message: str, code: int = 1) -> None:
    """Print one clear line on stderr and exit."""
    click.echo(f"llmtop: {message}", err=True)
    sys.exit(code)


class LlmtopGroup(click.Group):
    """Turns LlmtopError into one line on stderr, and Ctrl-C into a quiet exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LlmtopError as e:
            fail(str(e), e.exit_code)
        except KeyboardInterrupt:
            click.echo("llmtop: interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:
            sys.stderr.close()  # the reader (head, less) went away: nothing to say
            sys.exit(0)


@click.group(
    cls=LlmtopGroup,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, "-V", "--version", prog_name="llmtop")
@click.option(
    "--db",
    "db_path",
    type=click.Path(dir_okay=False),
    envvar="LLMTOP_DB",
    help="SQLite file (default: llmtop.db in the user data dir; env LLMTOP_DB).",
)
@click.pass_context
def main(ctx: click.Context, db_path: str | None) -> None:
    """htop for LLM inference: live TTFT, TPS, latency and resources of any model server.

    With no command, opens the dashboard.
    """
    ctx.ensure_object(dict)
    ctx.obj["db_path"] = db_path
    if ctx.invoked_subcommand is None:
        stubs.not_yet("the dashboard", issue=6)


main.add_command(runs.runs)
main.add_command(export.export)
for command in stubs.COMMANDS:
    main.add_command(command)
