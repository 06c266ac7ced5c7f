"""``llmtop report [RUN]``: one run's summary table and charts, in the terminal or as a file."""

from __future__ import annotations

import json

import click

from llmtop.app.commands.common import db_option, db_path_of
from llmtop.app.commands.consoles import cli_console
from llmtop.core.errors import UsageError
from llmtop.storage.db import open_readonly


@click.command()
@click.argument("run", type=int, required=False)
@db_option
@click.option(
    "--html",
    "html_path",
    type=click.Path(),
    help="Write the report as a self-contained HTML page (table and vector charts, offline).",
)
@click.option("--svg", "svg_path", type=click.Path(), help="Write the report as one SVG image.")
@click.option("--png", "png_path", type=click.Path(), help="Write the report as one PNG image.")
@click.option(
    "--markdown", "as_markdown", is_flag=True, help="Print a Markdown table for a README."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report's numbers as JSON.")
@click.option(
    "--width",
    type=click.IntRange(min=40, max=400),
    default=None,
    help="Columns of the terminal report (default: the terminal's).",
)
@click.pass_context
def report(
    ctx: click.Context,
    run: int | None,
    db_path: str | None,
    html_path: str | None,
    svg_path: str | None,
    png_path: str | None,
    as_markdown: bool,
    as_json: bool,
    width: int | None,
) -> None:
    """Summary table per step and charts of one run (default: the last run).

    The charts fit the scenario: latency by prompt length or temperature, requests/s and
    latency by concurrency, goodput by offered rate, resources over time for a soak; every
    report also has the E2E latency histogram and TTFT and decode tok/s over time.
    Piped or redirected, the report is plain text. --html, --svg and --png write files with
    vector charts (matplotlib) instead of the terminal's text charts.

    \b
    Examples:
      llmtop report                        # the last run, in the terminal
      llmtop report 12 --html run12.html   # a page to open in a browser or send
      llmtop report 12 --svg run12.svg     # one image (also --png FILE)
      llmtop report --markdown >> README.md
    """
    if as_markdown and as_json:
        raise UsageError("choose one of --markdown and --json")
    # Imported here: plotting pulls in textual (terminal) or matplotlib (files), which other
    # commands should not pay for.
    from llmtop.app.report.data import load_report, resolve_run
    from llmtop.app.report.report_files import FileKind, check_writable, render, write_file
    from llmtop.app.report.text_formats import report_json, report_markdown

    asked: tuple[tuple[str | None, FileKind], ...] = (
        (html_path, "html"),
        (svg_path, "svg"),
        (png_path, "png"),
    )
    files = [(path, kind) for path, kind in asked if path]
    if files and width is not None:
        raise UsageError("--width sets the terminal report's columns; files lay themselves out")
    for path, _ in files:
        check_writable(path)

    db = open_readonly(db_path_of(ctx, db_path))
    try:
        data = load_report(db, resolve_run(db, run))
    finally:
        db.close()
    title = f"llmtop report: run {data.summary.run.id}"
    for path, kind in files:
        write_file(path, render(data, kind, title))
        click.echo(f"wrote the report of run {data.summary.run.id} to {path}", err=True)
    if as_json:
        click.echo(json.dumps(report_json(data), indent=2, default=str))
    elif as_markdown:
        click.echo(report_markdown(data), nl=False)
    elif not files:
        from llmtop.app.report.document import print_report

        print_report(cli_console(width=width), data)
