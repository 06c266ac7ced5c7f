"""The engine launcher (with a stand-in server: the fake server run as a child, which is what the
launcher sees of any engine), make_backend and ``auto``, and the real ``llmtop serve`` driven
through both APIs."""

from __future__ import annotations

import asyncio
import json
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict

import httpx
import psutil
import pytest
from ollama._client import _parse_host
from support import servers, wire_truth
from support.collect import Sink
from support.servers import Behavior, FakeServer, refused_url
from yarl import URL

from llmtop.collectors.backends import AutoBackend, make_backend
from llmtop.collectors.engine import EngineBackend, EngineLaunch
from llmtop.collectors.ollama import OllamaBackend, ollama_base_url
from llmtop.collectors.openai_compat import OpenAIBackend
from llmtop.core.errors import SourceError, UsageError
from llmtop.core.metrics import tpot_ms
from llmtop.core.requests import GenerationRequest

STANDIN = [
    sys.executable, servers.__file__, "--port", "{port}", "--startup-delay", "0.2",
    "--config", json.dumps({"models": {"smollm2": asdict(Behavior(tokens=3))}}),
]  # fmt: skip


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pid: int, timeout: float = 60.0) -> bool:
    """Poll until ``pid`` has exited (a process we cannot wait() for: not our child)."""
    deadline = time.monotonic() + timeout
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def children_running(fragment: str) -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True)
            if fragment in " ".join(p.cmdline()) and not gone(p.pid)]  # fmt: skip


async def test_the_engine_starts_serves_and_stops():
    async with EngineBackend(EngineLaunch(command=STANDIN)) as b:
        pid = b.server_pid
        assert pid is not None and servers.__file__ in psutil.Process(pid).cmdline()
        assert URL(b.base_url).host == "127.0.0.1" and b.name == "engine"
        await b.check("smollm2")
        sink = Sink()
        await b.stream(GenerationRequest(1, 1, "smollm2", "hi"), sink)
        assert sink.finished(1).output_tokens == 3
    assert gone(pid) and b.server_pid is None


async def test_the_engine_is_stopped_when_the_run_fails():
    with pytest.raises(RuntimeError, match="boom"):
        async with EngineBackend(EngineLaunch(command=STANDIN)) as b:
            pid = b.server_pid
            raise RuntimeError("boom")
    assert pid is not None and gone(pid)


async def test_an_engine_that_exits_is_reported_with_its_last_line():
    """Its own "llmtop: " prefix is dropped: the CLI puts one in front of the whole message."""
    cmd = [sys.executable, "-c", "import sys; print('loading'); "
           "print('llmtop: no model file smollm2', file=sys.stderr); sys.exit(3)"]  # fmt: skip
    with pytest.raises(SourceError) as e:
        async with EngineBackend(EngineLaunch(command=cmd)):
            pass
    assert (
        str(e.value)
        == "the llmtop engine exited with code 3 before it answered: no model file smollm2"
    )


async def test_an_engine_that_never_answers_times_out_and_is_killed():
    cmd = [
        sys.executable,
        "-c",
        "import time; print('loading', flush=True); time.sleep(60)  # never-answers",
    ]
    with pytest.raises(
        SourceError,
        match=r"did not answer at http://127\.0\.0\.1:\d+ within 0\.5 s; its last output: loading",
    ):
        async with EngineBackend(EngineLaunch(command=cmd, startup_timeout_s=0.5)):
            pass
    assert children_running("never-answers") == []


LAUNCHER = """
import asyncio, json, signal, sys
from llmtop.collectors.engine import EngineBackend, EngineLaunch

# Ctrl-C as in a terminal: a suite started in the background by a non-interactive shell (as CI
# may be) hands its children SIGINT ignored, and Python then never turns it into an interrupt.
signal.signal(signal.SIGINT, signal.default_int_handler)

async def main():
    async with EngineBackend(EngineLaunch(command=json.loads(sys.argv[1]))) as b:
        print("ready", b.server_pid, flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


def start_launcher() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, json.dumps(STANDIN)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the engine answers
    assert line.startswith("ready "), line
    return proc, int(line.split()[1])


def test_ctrl_c_stops_the_engine():
    proc, child = start_launcher()
    try:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)  # a wait: under load its Python took 20 s and more to wind down
        assert gone(child)
    finally:  # a failed wait left the launcher and its engine running past the suite
        proc.kill()
        proc.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_engine_dies_with_a_killed_llmtop():
    proc, child = start_launcher()
    proc.kill()  # no cleanup at all: the kernel tells the child
    proc.wait(60)
    assert wait_gone(child)


def test_make_backend_names_and_bad_input(monkeypatch):
    assert isinstance(make_backend("ollama", "127.0.0.1:1"), OllamaBackend)
    assert isinstance(make_backend("openai", "http://h:8000"), OpenAIBackend)
    assert isinstance(make_backend("engine"), EngineBackend)
    assert isinstance(make_backend("auto"), AutoBackend)
    with pytest.raises(
        UsageError, match="unknown backend 'vllm': choose one of auto, ollama, openai, engine"
    ):
        make_backend("vllm")
    with pytest.raises(UsageError, match="bad URL 'ftp://x'"):
        make_backend("ollama", "ftp://x")
    with pytest.raises(UsageError, match="credentials"):
        make_backend("openai", "http://user:sk-secret@h/v1")
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(UsageError, match="NO_SUCH_KEY_VAR is not set"):
        make_backend("openai", "http://h/v1", api_key_env="NO_SUCH_KEY_VAR")
    assert make_backend("openai", "http://h:8000").base_url == "http://h:8000/v1"
    assert (
        make_backend("openai", "https://api.example.com/v1/").base_url
        == "https://api.example.com/v1"
    )


@pytest.mark.parametrize(
    "host",
    ["", "1.2.3.4", ":56789", "1.2.3.4:56789", "http://1.2.3.4", "https://example.com:56789",
     "example.com/path", "example.com:56789/path/", "[::1]:56789", "https://[0001:002::1]"],
)  # fmt: skip
def test_ollama_host_is_read_as_the_ollama_client_reads_it(host, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", host)
    ours, theirs = URL(ollama_base_url()), URL(_parse_host(host or None))
    assert (ours.scheme, ours.host, ours.port, ours.path.rstrip("/")) == (
        theirs.scheme, theirs.host, theirs.port, theirs.path.rstrip("/"))  # fmt: skip


async def test_auto_takes_ollama_when_it_answers(monkeypatch):
    with FakeServer({"m": Behavior(tokens=2)}) as srv:
        monkeypatch.setenv("OLLAMA_HOST", srv.url)
        async with make_backend("auto", engine_command=["false"]) as b:
            assert (b.name, b.base_url, b.server_pid) == ("ollama", srv.url, None)
            sink = Sink()
            await b.stream(GenerationRequest(1, 1, "m", "hi"), sink)
            assert sink.finished(1).output_tokens == 2


async def test_auto_starts_the_engine_when_ollama_does_not_answer(monkeypatch):
    url = refused_url()
    monkeypatch.setenv("OLLAMA_HOST", url)
    async with make_backend("auto", engine_command=STANDIN) as b:
        assert b.name == "engine" and b.base_url != url
        assert b.reason == f"no Ollama at {url} (connection refused)"
        pid = b.server_pid
        await b.check("smollm2")
    assert pid is not None and gone(pid)


async def test_auto_says_why_it_starts_the_engine_and_what_the_start_waits_for(monkeypatch):
    url = refused_url()
    monkeypatch.setenv("OLLAMA_HOST", url)
    heard: list[tuple[str, bool]] = []

    def on_status(text: str, *, notice: bool = False) -> None:
        heard.append((text, notice))

    async with make_backend("auto", engine_command=STANDIN, on_status=on_status) as b:
        assert b.name == "engine"
    notices = [t for t, n in heard if n]
    assert notices == [f"no Ollama at {url} (connection refused): measuring the bundled engine instead"]  # fmt: skip
    progress = [t for t, n in heard if not n]
    assert progress and all(t.startswith("starting the llmtop engine (") for t in progress)


async def test_auto_with_a_url_measures_that_server_whichever_api_it_speaks():
    with FakeServer({"m": Behavior(tokens=2)}) as srv:
        async with make_backend("auto", srv.url, engine_command=["false"]) as b:
            assert (b.name, b.base_url) == ("ollama", srv.url)
        async with make_backend("auto", srv.openai_url, engine_command=["false"]) as b:
            assert (b.name, b.base_url) == ("openai", srv.openai_url)
            sink = Sink()
            await b.stream(GenerationRequest(1, 1, "m", "hi"), sink)
            assert sink.finished(1).output_tokens == 2


async def test_auto_with_a_url_where_nothing_answers_fails_and_starts_nothing():
    url = refused_url()
    b = make_backend("auto", url, engine_command=STANDIN)
    with pytest.raises(SourceError) as e:
        await b.__aenter__()
    text = str(e.value)
    assert f"nothing at {url} answers as Ollama" in text and "OpenAI-compatible" in text
    assert "connection refused" in text and "\n" not in text
    assert b.server_pid is None  # no engine was started in its place
    with pytest.raises(UsageError, match="bad URL 'not-a-url:x'"):
        make_backend("auto", "not-a-url:x")


async def test_the_engine_backend_can_use_an_engine_already_running():
    with FakeServer({"smollm2": Behavior(tokens=2)}) as srv:
        async with make_backend("engine", srv.url) as b:
            assert (b.name, b.base_url, b.server_pid) == ("engine", srv.url, None)
            with pytest.raises(SourceError, match="'other' not found") as e:
                await b.check("other")
            assert "ollama pull" not in str(e.value)  # that hint is for Ollama only


ENGINE_SERIES = {
    "vllm:time_per_output_token_seconds_sum": "gap_s", "vllm:time_per_output_token_seconds_count":
    "gaps", "vllm:request_decode_time_seconds_sum": "decode_s",
    "vllm:request_decode_time_seconds_count": "decoded",
}  # fmt: skip
"""The engine's own record of its decode, summed over requests (its /metrics page)."""


def engine_totals(base_url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base_url}/metrics", timeout=30).text
    out = dict.fromkeys(ENGINE_SERIES.values(), 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ENGINE_SERIES:
                out[ENGINE_SERIES[sample.name]] += sample.value
    return out


@pytest.mark.slow
async def test_the_real_engine_agrees_through_both_apis():
    """``llmtop serve``, started by the backend, read through the Ollama API and the OpenAI API:
    for each request, our TPOT (first to last token on our clock) against the engine's own for
    that request (the growth of its /metrics TPOT histogram: the same gaps on its clock), and the
    Ollama API's eval_duration against the engine's decode time. Judged per request, each
    against the engine's own clock: the engine's speed moves with the machine's load (medians
    of three went 42 vs 18 tok/s under load), but a request's two readings move together.
    Requests go one at a time, alternating between the APIs, so each decodes alone."""
    from llmtop.collectors.engine import engine_available

    if (why := engine_available()) is not None:
        pytest.skip(why)

    n = 32
    errors: dict[str, list[float]] = {"ollama": [], "openai": []}
    async with (
        make_backend("engine", model="smollm2") as b,
        OpenAIBackend(b.base_url + "/v1") as oa,
    ):
        (model,) = await b.list_models()
        for req_id in range(6):
            api, backend = ("ollama", b) if req_id % 2 == 0 else ("openai", oa)
            before = await asyncio.to_thread(engine_totals, b.base_url)
            sink = Sink()
            r = GenerationRequest(1, req_id, model, "What is AI?", max_tokens=n, temperature=0.0)
            await backend.stream(r, sink)
            f = sink.finished(req_id)
            assert f.output_tokens == n

            def grown(before: dict[str, float] = before) -> dict[str, float] | None:
                now = engine_totals(b.base_url)
                d = {k: now[k] - before[k] for k in now}
                return d if (d["gaps"], d["decoded"]) == (n - 1, 1) else None

            # the engine counts a request's end as it closes it: wait for /metrics to show it
            deadline = time.monotonic() + 30
            while (d := await asyncio.to_thread(grown)) is None:
                assert time.monotonic() < deadline, "the engine's /metrics never showed it"
                await asyncio.sleep(0.02)
            ours = tpot_ms(f.t_first_ns, f.t_last_ns, n)
            assert ours is not None
            engine = d["gap_s"] * 1000 / (n - 1)
            errors[api].append(abs(ours - engine))
            if api == "ollama":
                assert f.server.eval_ns == pytest.approx(d["decode_s"] * 1e9, abs=1000)
    room = wire_truth.LATE_MS / (n - 1)
    print(f"TPOT off the engine's, ms: {errors} (room {room:.2f})")
    for api, errs in errors.items():
        assert statistics.median(errs) < room, (api, errs, room)
