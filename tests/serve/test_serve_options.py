"""``llmtop serve``'s options are defined once (engine/serve_options.py): the CLI's click options
and the engine program's parser are both built from ``ServeOptions``, and what the CLI hands the
program parses back to the same options."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import click
import pytest
from support.cli import assert_one_line_error, run_llmtop

from llmtop.app.commands.serve import serve
from llmtop.engine.serve_options import (
    PROGRAM,
    ServeOptions,
    option_specs,
    parse_argv,
    program_argv,
    to_argv,
)

CHANGED = ServeOptions(
    host="0.0.0.0",
    port=0,
    model="/models/x.gguf",
    max_batch=16,
    context_length=512,
    threads=2,
    max_queue=0,
    max_body_bytes=4096,
    idle_timeout_s=5,
)


def test_the_cli_options_are_the_dataclass_fields():
    params = [p for p in serve.params if isinstance(p, click.Option)]
    assert [p.name for p in params] == [f.name for f in dataclasses.fields(ServeOptions)]
    for p, spec in zip(params, option_specs(), strict=True):
        assert p.opts == [spec.flag] and p.default == spec.default and p.help == spec.help
    flags = [p.opts[0] for p in params]
    assert flags == ["--host", "--port", "--model", "--max-batch", "--ctx", "--threads",
                     "--max-queue", "--max-body-bytes", "--idle-timeout"]  # fmt: skip


@pytest.mark.parametrize("options", [ServeOptions(), CHANGED], ids=["defaults", "changed"])
def test_what_the_cli_hands_the_program_parses_back(options):
    assert parse_argv(to_argv(options)) == options


def test_no_flags_mean_the_defaults():
    assert parse_argv([]) == ServeOptions()
    assert "--ctx" not in to_argv(ServeOptions())  # unset: the model decides


def test_the_program_runs_in_a_fresh_interpreter_with_torch_first():
    argv = program_argv(CHANGED, python="/usr/bin/python3")
    assert argv[:3] == ["/usr/bin/python3", "-c", PROGRAM]
    assert PROGRAM.startswith("import torch")
    assert parse_argv(argv[3:]) == CHANGED


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--port", "65536"], "--port 65536: expected a whole number from 0 to 65535"),
        (["--max-batch", "0"], "--max-batch 0"),
        (["--ctx", "8"], "--ctx 8"),
        (["--port", "x"], "invalid int value"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_the_program_refuses_a_bad_argument(argv, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_argv(argv)


def test_the_dataclass_checks_its_ranges():
    with pytest.raises(ValueError, match="--idle-timeout 0"):
        ServeOptions(idle_timeout_s=0)
    with pytest.raises(ValueError, match="--threads True"):
        ServeOptions(threads=True)  # a bool is not a count


def test_the_program_reports_a_bad_argument_in_one_line():
    proc = subprocess.run(
        [sys.executable, "-c", PROGRAM, "--max-queue", "-1"], capture_output=True, text=True
    )
    assert_one_line_error(proc, 2, "--max-queue -1")


def test_the_cli_refuses_out_of_range_before_starting_the_engine():
    proc = run_llmtop("serve", "--port", "70000")
    assert proc.returncode == 2 and "70000 is not in the range 0<=x<=65535" in proc.stderr
