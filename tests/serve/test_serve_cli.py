"""``llmtop serve`` as a command: the ready line launchers wait for, binding rules, one-line
errors, and a prompt exit on SIGTERM even with a stream open."""

from __future__ import annotations

import re
import signal
import socket

import httpx
import pytest
from serve_process import start_serve
from support.cli import assert_one_line_error, run_llmtop

READY_LINE = re.compile(r"^llmtop serve: listening on http://127\.0\.0\.1:(\d+) \(model smollm2\)$")


def test_ready_line_names_the_real_port_and_the_model(server):
    (line,) = [x for x in server.stdout if x.startswith("llmtop serve:")]
    m = READY_LINE.match(line)
    assert m and int(m.group(1)) > 0
    assert server.url == f"http://127.0.0.1:{m.group(1)}"
    assert not any("warning" in x for x in server.stderr), server.stderr  # loopback: no warning
    # every wait before the ready line said what it waited for, on stderr
    said = " ".join(server.stderr)
    for stage in ("loading smollm2", "warming up"):
        assert f"llmtop serve: {stage}" in said, server.stderr


def test_a_taken_port_fails_at_once_with_one_line(tmp_path):
    """Before the model is loaded: given a model file that is not GGUF, the error is still the
    port's (loading first would have said "not a GGUF"). A bound in seconds did not hold on a
    loaded machine, where Python alone took ~20 s to start."""
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("not a model\n" * 100)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = run_llmtop("serve", "--port", str(port), "--model", str(not_gguf))
    assert_one_line_error(proc, 1, f"127.0.0.1:{port}", "address already in use", "--port 0")


@pytest.mark.parametrize(
    ("model", "fragment"),
    [
        ("/nonexistent/model.gguf", "model file not found"),
        ("llama3", "unknown model 'llama3'"),
    ],
)
def test_bad_model_is_one_line(model, fragment):
    assert_one_line_error(run_llmtop("serve", "--port", "0", "--model", model), 2, fragment)


def test_a_file_that_is_not_gguf_is_one_line(tmp_path):
    bad = tmp_path / "notes.gguf"
    bad.write_text("not a model\n" * 100)
    proc = run_llmtop("serve", "--port", "0", "--model", str(bad))
    assert_one_line_error(proc, 2, "not a GGUF", "notes.gguf")


@pytest.mark.slow
def test_other_hosts_get_a_warning_and_sigterm_ends_open_streams():
    sp = start_serve("--host", "0.0.0.0", "--port", "0", "--max-batch", "2")
    try:
        assert any("warning" in x and "0.0.0.0" in x and "authentication" in x for x in sp.stderr)
        assert sp.url.startswith("http://0.0.0.0:")
        port = sp.url.rsplit(":", 1)[1]
        with httpx.stream("POST", f"http://127.0.0.1:{port}/api/generate", timeout=30,
                          json={"model": "smollm2", "prompt": "Tell me a long story.",
                                "options": {"num_predict": 500}}) as r:  # fmt: skip
            lines = r.iter_lines()
            next(lines)  # streaming
            sp.proc.send_signal(signal.SIGTERM)
            rest = list(lines)  # the server ends the stream instead of waiting for 500 tokens
        assert '"error"' in rest[-1] and "stopping" in rest[-1]
        # Cut short, not run to its end: counted in tokens, which a busy machine does not
        # stretch as it stretches seconds. The exit is waited for (a hang still fails).
        assert len(rest) < 500 // 2, len(rest)
        assert sp.proc.wait(60) is not None
    finally:
        sp.stop()
    assert not any("Traceback" in x for x in sp.stderr), sp.stderr


def test_a_gguf_file_is_served_under_its_file_name(tmp_path):
    from support.tiny_gguf import write_tiny_gguf  # the engine tests' tiny random-weight llama

    path = write_tiny_gguf(tmp_path / "tiny-llama.gguf")
    sp = start_serve("--port", "0", "--model", str(path))
    try:
        assert sp.stdout[-1].endswith("(model tiny-llama)")
        tags = httpx.get(f"{sp.url}/api/tags").json()
        assert [m["name"] for m in tags["models"]] == ["tiny-llama"]
        body = {"model": "tiny-llama", "prompt": "the cat", "raw": True, "stream": False,
                "options": {"num_predict": 3, "temperature": 0}}  # fmt: skip
        r = httpx.post(f"{sp.url}/api/generate", json=body, timeout=30).json()
        assert (
            r["eval_count"] <= 3 and r["prompt_eval_count"] == len(r["context"]) - r["eval_count"]
        )
        missing = httpx.post(f"{sp.url}/api/generate", json={**body, "model": "smollm2"})
        assert missing.status_code == 404
    finally:
        sp.stop()


def test_the_server_keeps_its_cache_in_the_session_dir(server, private_dirs):
    """The child inherits conftest's ``private_dirs``: its model index lands there, not in the
    user's ~/.cache."""
    entries = [p.name for p in (private_dirs / "cache/llmtop/engine").iterdir()]
    assert any(name.startswith("SmolLM2") for name in entries), entries
