"""Faults: each gives exactly one RequestFailed of the right kind with one clear line while the
requests beside it go on; timeouts; cancellation; check() naming the URL."""

from __future__ import annotations

import asyncio

import ollama
import pytest
from support.collect import Sink, wait_until
from support.servers import Behavior, FakeServer, refused_url

from llmtop.collectors.ollama import OllamaBackend
from llmtop.collectors.openai_compat import OpenAIBackend
from llmtop.core.errors import SourceError
from llmtop.core.events import TokenReceived
from llmtop.core.requests import GenerationRequest, Timeouts

FAULTY = {
    "cut": Behavior(tokens=10, fault="cut", fault_after=3, itl_ms=2),
    "malformed": Behavior(tokens=10, fault="malformed", fault_after=2),
    "error-line": Behavior(tokens=10, fault="error_line", fault_after=1),
    "http500": Behavior(fault="status", status=500),
    "http503-empty": Behavior(fault="status", status=503, error_body=False),
    "http429": Behavior(fault="status", status=429),
    "hang-headers": Behavior(fault="hang_before_headers", hold_s=5),
    "hang-mid": Behavior(tokens=10, fault="hang_mid_stream", fault_after=2, hold_s=5),
    "html": Behavior(fault="wrong_content_type"),
    "closed": Behavior(fault="close_before_headers"),
}
GOOD = Behavior(tokens=20, ttft_ms=5, itl_ms=10)
# model -> (error kind, HTTP status, chunks before the failure, a fragment of the message)
EXPECTED: dict[str, tuple[str, int | None, int, str]] = {
    "cut": ("protocol", None, 3, "stream cut after 3 chunks"),
    "malformed": ("protocol", None, 2, "malformed"),
    "error-line": ("protocol", None, 1, "fake runner crashed"),
    "http500": ("http_status", 500, 0, "HTTP 500 Internal Server Error"),
    "http503-empty": ("http_status", 503, 0, "HTTP 503 Service Unavailable"),
    "http429": ("http_status", 429, 0, "Retry-After: 1"),
    "hang-headers": ("timeout", None, 0, "no first token within 0.4 s"),
    "hang-mid": ("timeout", None, 2, "no data for 0.4 s after 2 chunks"),
    "html": ("protocol", None, 0, "unexpected Content-Type 'text/html"),
    "closed": ("protocol", None, 0, "closed the connection"),
    "unknown-model": ("http_status", 404, 0, "HTTP 404"),
}
TIMEOUTS = Timeouts(connect_s=2, first_token_s=0.4, between_chunks_s=0.4)


@pytest.fixture(scope="module")
def server():
    with FakeServer({"good": GOOD, **FAULTY}) as srv:
        yield srv


def backend_for(api: str, url: str, **kw) -> OllamaBackend | OpenAIBackend:
    return OllamaBackend(url, **kw) if api == "ollama" else OpenAIBackend(url + "/v1", **kw)


def req(i: int, model: str) -> GenerationRequest:
    return GenerationRequest(run_id=1, request_id=i, model=model, prompt=f"req-{i}")


@pytest.mark.parametrize("api", ["ollama", "openai"])
async def test_each_fault_fails_its_request_alone(server, api):
    sink = Sink()
    models = [*sorted(EXPECTED)]
    async with backend_for(api, server.url, timeouts=TIMEOUTS) as b:
        faulty = [b.stream(req(i, m), sink) for i, m in enumerate(models)]
        good = [b.stream(req(100 + i, "good"), sink) for i in range(4)]
        await asyncio.gather(*faulty, *good)  # nothing raised: failures are events
    for i, model in enumerate(models):
        kind, status, chunks, fragment = EXPECTED[model]
        kinds = sink.kinds(i)
        assert kinds[0] == "RequestStarted" and kinds[-1] == "RequestFailed", (model, kinds)
        ev = sink.failed(i)
        assert (ev.error_kind, ev.http_status, ev.chunks) == (kind, status, chunks), (model, ev)
        assert fragment in ev.message and "\n" not in ev.message, (model, ev.message)
        assert ev.t_start_ns == sink.started(i).t_ns <= ev.t_ns
        assert len(sink.tokens(i)) == chunks
    for i in range(100, 104):
        fin = sink.finished(i)
        assert fin.output_tokens == fin.chunks == 20


@pytest.mark.parametrize("api", ["ollama", "openai"])
async def test_connection_refused_is_a_connect_failure(api):
    url = refused_url()
    sink = Sink()
    async with backend_for(api, url) as b:
        await b.stream(req(1, "m"), sink)
    ev = sink.failed(1)
    assert sink.kinds(1) == ["RequestStarted", "RequestFailed"]
    assert ev.error_kind == "connect"
    assert ev.message == f"cannot connect to {url.removeprefix('http://')}: connection refused"


async def test_total_time_limit(server):
    sink = Sink()
    async with OllamaBackend(server.url, timeouts=Timeouts(total_s=0.15)) as b:
        await b.stream(req(1, "good"), sink)  # would take 5 + 19 x 10 ms
    ev = sink.failed(1)
    assert ev.error_kind == "timeout" and "total limit of 0.15 s" in ev.message
    assert 5 <= ev.chunks < 20


@pytest.mark.parametrize("api", ["ollama", "openai"])
@pytest.mark.parametrize("when", ["mid_stream", "before_headers"])
async def test_cancelling_a_request_reports_it_closes_the_stream_and_reraises(server, api, when):
    server.log(clear=True)
    model = "good" if when == "mid_stream" else "hang-headers"
    sink = Sink()
    async with backend_for(api, server.url) as b:
        task = asyncio.create_task(b.stream(req(1, model), sink))
        if when == "mid_stream":
            await sink.wait_for(lambda e: isinstance(e, TokenReceived) and e.index == 2)
        else:
            await sink.wait_for(lambda e: type(e).__name__ == "RequestStarted")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    ev = sink.failed(1)
    assert ev.error_kind == "cancelled"
    assert ev.chunks == (3 if when == "mid_stream" else 0)
    assert ev.message == f"cancelled after {ev.chunks} chunks"
    # the server sees the connection closed (its handler is cancelled) within milliseconds
    assert await wait_until(lambda: server.log()[0].outcome != "running")
    assert server.log()[0].outcome == "client_gone"


@pytest.mark.parametrize("api", ["ollama", "openai"])
async def test_check_passes_for_a_model_the_server_has(server, api):
    async with backend_for(api, server.url) as b:
        await b.check("good")
        await b.check(None)
        names = await b.list_models()
    assert "good" in {n.removesuffix(":latest") for n in names} and len(names) == len(FAULTY) + 1


async def test_ollama_model_list_matches_the_official_client(server):
    async with OllamaBackend(server.url) as b:
        ours = await b.list_models()
        await b.check("good:latest")
    theirs = [m.model for m in (await ollama.AsyncClient(host=server.url).list()).models]
    assert ours == theirs


@pytest.mark.parametrize("api", ["ollama", "openai"])
async def test_check_names_the_url_and_the_models_for_an_unknown_model(api):
    with FakeServer({"alpha": Behavior(), "beta": Behavior()}) as srv:
        async with backend_for(api, srv.url) as b:
            with pytest.raises(SourceError) as e:
                await b.check("gamma")
    msg = str(e.value)
    assert "'gamma' not found" in msg and srv.url in msg and "alpha" in msg and "beta" in msg


@pytest.mark.parametrize("api", ["ollama", "openai"])
async def test_check_names_the_url_of_an_unreachable_server(api):
    url = refused_url()
    async with backend_for(api, url) as b:
        with pytest.raises(SourceError) as e:
            await b.check("m")
    assert url in str(e.value) and "connection refused" in str(e.value)


async def test_check_says_when_the_server_wants_a_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeServer({"m": Behavior()}, api_key="k") as srv:
        async with OpenAIBackend(srv.openai_url) as b:
            with pytest.raises(SourceError, match=r"HTTP 401.*API key"):
                await b.check("m")


async def test_a_server_that_is_not_ollama_is_named(server):
    async with OllamaBackend(server.url + "/v1") as b:  # the wrong base: /v1/api/tags is a 404
        with pytest.raises(SourceError, match=r"answered HTTP 404 .*is this an Ollama server"):
            await b.check("good")


@pytest.mark.parametrize("api", ["ollama", "openai"])
async def test_a_kept_alive_connection_closed_under_us_is_retried_once(server, api):
    """The race every pooled client meets: the server drops an idle connection just as a request
    goes out on it. That request is sent again on a new connection; a fresh one is not."""
    server.log(clear=True)
    server.script(Behavior(tokens=2), Behavior(fault="close_before_headers"), Behavior(tokens=2))
    sink = Sink()
    async with backend_for(api, server.url) as b:
        await b.stream(req(1, "good"), sink)
        await b.stream(req(2, "good"), sink)  # goes out on request 1's connection, which closes
    first, dropped, retried = server.log()
    assert first.peer == dropped.peer != retried.peer
    assert sink.kinds(2) == ["RequestStarted", "TokenReceived*", "RequestFinished"]
    assert sink.finished(2).t_start_ns > sink.started(2).t_ns  # t0 of the attempt that answered


def test_os_errors_read_as_words_a_failed_lookup_included():
    """A name that does not resolve says so, not ``os.strerror(-2)``'s "unknown error -2"."""
    import errno
    import socket

    import aiohttp

    from llmtop.collectors.http import connect_reason, os_error_text

    lookup = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert os_error_text(lookup) == "unknown host: name or service not known"
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed")
    assert os_error_text(refused) == "connection refused"
    key = aiohttp.client_reqrep.ConnectionKey("not-a-host", 80, False, True, None, None, None)
    assert connect_reason(aiohttp.ClientConnectorError(key, lookup)) == (
        "unknown host: name or service not known"
    )
