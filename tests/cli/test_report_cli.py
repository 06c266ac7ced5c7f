"""`llmtop report` as a user runs it: the console script, a real database, files on disk."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from report.scenario_runs import write_scenario_run
from support.cli import assert_one_line_error, run_llmtop

from llmtop.storage.db import open_database


@pytest.fixture(scope="module")
def dbfile(tmp_path_factory):
    path = tmp_path_factory.mktemp("rcli") / "r.db"
    write_scenario_run(path, "basic")
    write_scenario_run(path, "concurrency")
    return str(path)


def test_default_is_the_last_run_in_plain_text_on_a_pipe(dbfile):
    proc = run_llmtop("report", "--db", dbfile)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "run 2" in out and "scenario concurrency" in out
    assert "Requests/s by concurrency" in out and "E2E latency (ms)" in out
    assert "c1" in out and "c8" in out
    assert "\x1b[" not in out  # not a terminal: no colour codes


def test_colour_on_a_terminal(dbfile):
    proc = run_llmtop("report", "1", "--db", dbfile, env={"NO_COLOR": "", "FORCE_COLOR": "1",
                                                           "COLUMNS": "150"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "\x1b[" in proc.stdout and "Latency by prompt" in proc.stdout


def test_markdown_and_json(dbfile):
    md = run_llmtop("report", "1", "--markdown", "--db", dbfile)
    assert md.returncode == 0, md.stderr
    rows = [line for line in md.stdout.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows] == ["| step", "| short", "| medium", "| long", "| all"]
    data = json.loads(run_llmtop("report", "2", "--json", "--db", dbfile).stdout)
    assert data["run"]["id"] == 2 and data["breakdown"]["dimension"] == "concurrency"
    assert [s["step"] for s in data["steps"]] == ["c1", "c2", "c4", "c8"]


def test_html_svg_and_png_files(dbfile, tmp_path):
    svg, html, png = tmp_path / "r.svg", tmp_path / "r.html", tmp_path / "r.png"
    proc = run_llmtop("report", "1", "--svg", str(svg), "--html", str(html), "--png", str(png),
                      "--db", dbfile)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # the report went to the files
    for path in (svg, html, png):
        assert f"to {path}" in proc.stderr
    root = ET.parse(svg).getroot()
    assert "Latency by prompt: prefill + decode (mean ms)" in "".join(root.itertext())
    assert len(root.findall(".//{http://www.w3.org/2000/svg}path")) > 50  # vector charts
    page = html.read_text()
    assert "Latency by prompt" in page and "Decode tok/s over the run" in page
    assert page.count("<svg ") >= 5
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_file_reports_do_not_load_the_terminal_stack_and_the_terminal_not_matplotlib(
    dbfile, tmp_path
):
    """The CLI's start time: each path imports only what it draws with."""
    code = (
        "import sys\n"
        "from llmtop.app.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('matplotlib' in sys.modules, 'textual' in sys.modules, file=sys.stderr)\n"
    )
    page = tmp_path / "r.html"
    for args, loaded in ((["--html", str(page)], "True False"), ([], "False True")):
        proc = subprocess.run(
            [sys.executable, "-c", code, "report", "1", "--db", dbfile, *args],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.stderr.strip().splitlines()[-1] == loaded, (args, proc.stderr)


def test_without_matplotlib_a_file_report_says_what_to_install(dbfile, tmp_path):
    # a package named matplotlib that cannot be imported, ahead of the real one on the path
    shadow = tmp_path / "shadow" / "matplotlib"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'matplotlib'\", name='matplotlib')\n"
    )
    env = {"PYTHONPATH": str(shadow.parent)}
    out = tmp_path / "r.png"
    proc = run_llmtop("report", "1", "--png", str(out), "--db", dbfile, env=env)
    assert_one_line_error(proc, 1, "--png needs matplotlib", "pip install")
    assert not out.exists()
    terminal = run_llmtop("report", "1", "--db", dbfile, env=env)  # the terminal needs none
    assert terminal.returncode == 0 and "Latency by prompt" in terminal.stdout


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["99"], 2, "no run with id 99"),
        (["--markdown", "--json"], 2, "choose one of --markdown and --json"),
        (["--svg", "/nonexistent/dir/r.svg"], 2, "cannot write /nonexistent/dir/r.svg"),
        (["--png", "/nonexistent/r.png"], 2, "cannot write /nonexistent/r.png: no directory"),
        (["--html", "/"], 2, "cannot write /: it is a directory"),
        (["--html", "r.html", "--width", "100"], 2, "--width sets the terminal report's"),
    ],
)
def test_bad_input_is_one_line(dbfile, args, code, fragment):
    assert_one_line_error(run_llmtop("report", *args, "--db", dbfile), code, fragment)


def test_missing_and_empty_databases(tmp_path):
    missing = tmp_path / "none.db"
    assert_one_line_error(run_llmtop("report", "--db", str(missing)), 1, "no database at")
    assert not missing.exists()  # reading never creates a database
    empty = tmp_path / "empty.db"
    open_database(empty).close()
    assert_one_line_error(run_llmtop("report", "--db", str(empty)), 2, "no runs in this database")
