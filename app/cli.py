"""The ``llmtop`` command: a click group whose subcommands live one per module in app/commands/.

Every expected failure is an ``LlmtopError``: printed as one line on stderr, never a traceback,
with its exit code (1, or 2 for usage). Ctrl-C exits 130. A bug (any other exception) is one
line too, its traceback appended to the user log dir's crash.log.
"""

from __future__ import annotations

import atexit
import importlib
import os
import sys
import threading
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import click
import platformdirs

from llmtop import __version__
from llmtop.app.commands import proxy_options, run_options
from llmtop.core.errors import LlmtopError

COMMANDS = {name: name for name in
            ("runs", "export", "serve", "report", "compare", "record", "proxy", "scenarios", "doctor")}  # fmt: skip
"""Each subcommand's module under app/commands/ (its click command has the same name). They are
imported when named, not at start: ``llmtop record`` then loads what recording needs, not the
doctor's clients or the report's statistics (half a second of every short run's CPU)."""


def fail(message: str, code: int = 1) -> None:
    """Print one clear line on stderr and exit."""
    click.echo(f"llmtop: {message}", err=True)
    sys.exit(code)


class LlmtopGroup(click.Group):
    """Turns LlmtopError into one line on stderr, and Ctrl-C into a quiet exit; loads each
    subcommand's module when that command is named (``COMMANDS``)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | COMMANDS.keys())

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if module is None:
            return super().get_command(ctx, cmd_name)
        command = getattr(importlib.import_module(f"llmtop.app.commands.{module}"), cmd_name)
        assert isinstance(command, click.Command)
        return command

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """A bad dashboard flag (``llmtop --requests 0``) is one line too, exit 2."""
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            usage_error(e, ctx)
            raise  # unreachable: usage_error exits

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        ctx.meta["llmtop.command"] = name  # for the help hint of an error click gives no context
        return name, command, rest

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as e:  # a subcommand's bad option, value or a command that is not
            usage_error(e, ctx)
        except LlmtopError as e:
            fail(str(e), e.exit_code)
        except KeyboardInterrupt:
            click.echo("llmtop: interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:
            sys.stderr.close()  # the reader (head, less) went away: nothing to say
            sys.exit(0)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # click's own: it prints them
        except Exception as e:
            internal_error(e)


def usage_error(e: click.UsageError, group: click.Context) -> None:
    """click's usage box (four lines: usage, hint, blank, error) as one ``llmtop:`` line, exit 2:
    what was wrong, then where the help is."""
    if e.ctx is not None:
        where = e.ctx.command_path
    else:  # some parser errors carry no context: name the subcommand being parsed
        name = group.meta.get("llmtop.command")
        where = f"llmtop {name}" if name else "llmtop"
    message = " ".join(e.format_message().split())
    fail(f"{message} (see '{where} --help')", 2)


def internal_error(e: Exception) -> None:
    """A bug: still one line on stderr (the traceback goes to a file, for the bug report), exit 1.
    ``LLMTOP_DEBUG=1`` shows it in place instead."""
    if os.environ.get("LLMTOP_DEBUG"):
        raise e
    where = ""
    try:
        log_dir = Path(platformdirs.user_log_dir("llmtop"))
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / "crash.log"
        with log.open("a", encoding="utf-8") as f:
            f.write(f"--- llmtop {__version__} {datetime.now().isoformat(timespec='seconds')} "
                    f"{' '.join(sys.argv)}\n")  # fmt: skip
            traceback.print_exception(e, file=f)
        where = f"; the traceback is in {log}"
    except OSError:
        pass
    message = " ".join(str(e).split())[:200]
    fail(f"internal error: {type(e).__name__}: {message} (a bug in llmtop{where})", 1)


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
@click.option("--theme", default=None, metavar="NAME",
              help="Dashboard theme: llmtop-dark, llmtop-light, llmtop-high-contrast, yours.")  # fmt: skip
@run_options.backend_options
@run_options.run_options
@proxy_options.dashboard_options
@click.pass_context
def main(ctx: click.Context, db_path: str | None, theme: str | None, **flags: Any) -> None:
    """htop for LLM inference: live TTFT, TPS, latency and resources of any model server.

    With no command, opens the dashboard; with --scenario it starts that run at once (the
    backend and run flags are those of 'llmtop record'); with --proxy --upstream URL it runs
    'llmtop proxy' in front of that server and shows what its clients see. A proxy that runs
    elsewhere on the same database is shown too.
    """
    ctx.ensure_object(dict)
    ctx.obj["db_path"] = db_path
    if ctx.invoked_subcommand is None:
        from llmtop.app.app import open_dashboard

        open_dashboard(db_path, theme, flags)


def run() -> NoReturn:
    """The ``llmtop`` console script: ``main``, then out without the interpreter's teardown.

    Freeing ~650 modules and every object one by one took 60-90 ms at the end of each run
    (a quarter of a short ``record``'s CPU, bench/collector.py). By the time a command returns
    it has closed its database and joined its threads; stdout and stderr are flushed and the
    atexit handlers run (the engine's child is stopped there) as at any exit. A thread that is
    still working (not a daemon) gets the ordinary exit, which waits for it.
    """
    try:
        main()  # click's standalone mode ends in SystemExit, whatever happened
        code: str | int | None = 0
    except SystemExit as e:
        code = e.code
    main_thread = threading.main_thread()
    if any(t is not main_thread and not t.daemon and t.is_alive() for t in threading.enumerate()):
        sys.exit(code)
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): printed, status 1, as Python does
        print(code, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader gone (head), or closed after a broken pipe
            pass
    os._exit(status)
