"""Clients get the same through ``llmtop proxy`` as directly: the upstream gets the same request
(its own Host aside), the client every byte the upstream sent (status line, headers, chunk
framing); the official ``ollama`` and ``openai`` clients and curl see the same answers and the
same chunks. Real processes and sockets throughout."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import httpx
import ollama
import openai
import pytest
from support.proxy import MODEL, ProxyProcess, start_proxy
from support.raw_upstream import RawUpstream, exchange, parse_response
from support.servers import Behavior, FakeServer

DURATIONS = {"total_duration", "load_duration", "prompt_eval_duration", "eval_duration"}

BODY = '{"answer": "é ✓ 🚀", "n": 1}\n'.encode()
CANNED = (
    b"HTTP/1.1 203 Quite Fine\r\n"
    b"Content-Type: application/json; charset=utf-8\r\n"
    b"X-Request-Id: abc-123\r\n"
    b"Set-Cookie: a=1\r\n"
    b"Set-Cookie: b=2\r\n"
    b"x-lower-case: kept as sent\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)
LINES = [b'{"n": 1}\n', b'{"n": 2, "t": "\xc3\xa9"}\n', b'{"n": 3, "done": true}\n']


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


STREAMED = [
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n"
    b"X-Stream: yes\r\n\r\n" + _chunk(LINES[0]),
    _chunk(LINES[1]),
    _chunk(LINES[2]) + b"0\r\n\r\n",
]


def _answer(head: bytes, body: bytes) -> list[bytes]:
    return STREAMED if b" /stream" in head.split(b"\r\n")[0] else [CANNED]


def _request(target: bytes, body: bytes = b"") -> bytes:
    return (
        b"POST " + target + b" HTTP/1.1\r\nHost: example.invalid\r\nX-Thing: a\r\nX-Thing: b\r\n"
        b"Authorization: Bearer sk-not-stored\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
    )


def _headers(head: bytes) -> list[tuple[bytes, bytes]]:
    """A request's headers in order, without those a proxy owns (Host, Connection) or whose
    position the framing decides (Content-Length, compared on its own)."""
    own = {b"host", b"connection", b"content-length"}
    out = []
    for line in head.rstrip(b"\r\n").split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() not in own:
            out.append((name, value.strip()))
    return out


def _content_length(head: bytes) -> bytes:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return value.strip()
    return b""


def test_the_upstream_gets_the_request_as_the_client_sent_it(tmp_path):
    body = json.dumps({"model": "m", "input": "é ✓"}).encode()
    target = b"/api/embed?x=1&y=%2F&z"
    with (
        RawUpstream(_answer) as up,
        start_proxy(up.url, tmp_path / "db", "--backend", "ollama") as pp,
    ):
        exchange(up.url, _request(target, body))
        exchange(pp.url, _request(target, body))
        assert pp.stop() == 0
    # (the proxy's server sampler also asks the upstream for /api/ps: not ours to compare)
    (head_d, body_d), (head_p, body_p) = [r for r in up.received if b"/api/embed" in r[0]]
    assert head_p.split(b"\r\n")[0] == head_d.split(b"\r\n")[0] == b"POST " + target + b" HTTP/1.1"
    assert _headers(head_p) == _headers(head_d)
    assert _content_length(head_p) == _content_length(head_d)
    assert body_p == body_d == body


def test_the_client_gets_every_byte_the_upstream_sent(tmp_path):
    """Status line, headers (spelling, order, duplicates), body: the same bytes, nothing added."""
    with (
        RawUpstream(_answer) as up,
        start_proxy(up.url, tmp_path / "db", "--backend", "ollama") as pp,
    ):
        direct = exchange(up.url, _request(b"/v1/whatever"))
        proxied = exchange(pp.url, _request(b"/v1/whatever"))
        assert pp.stop() == 0
    assert proxied == direct == CANNED
    assert parse_response(proxied).status_line == b"HTTP/1.1 203 Quite Fine"


def test_a_stream_arrives_as_the_same_bytes_and_chunks(tmp_path):
    with (
        RawUpstream(_answer) as up,
        start_proxy(up.url, tmp_path / "db", "--backend", "ollama") as pp,
    ):
        direct = exchange(up.url, _request(b"/stream"))
        proxied = exchange(pp.url, _request(b"/stream"))
        assert pp.stop() == 0
    assert proxied == direct == b"".join(STREAMED)  # the chunk framing too
    assert parse_response(proxied).chunks == LINES


# --- the official clients and curl, against the fake model server -------------------------------


def _without(obj: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in keys}


def _ollama_chunks(host: str, api: str, stream: bool) -> list[dict[str, Any]]:
    client = ollama.Client(host=host)
    if api == "chat":
        out = client.chat(model=MODEL, messages=[{"role": "user", "content": "hi é"}],
                          stream=stream, options={"num_predict": 6})  # fmt: skip
    else:
        out = client.generate(model=MODEL, prompt="hi é", stream=stream,
                              options={"num_predict": 6})  # fmt: skip
    chunks = list(out) if stream else [out]
    return [_without(c.model_dump(), DURATIONS) for c in chunks]  # type: ignore[union-attr]


@pytest.mark.parametrize("api", ["chat", "generate"])
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_the_ollama_client_sees_the_same(fake: FakeServer, proxy: ProxyProcess, api, stream):
    direct = _ollama_chunks(fake.url, api, stream)
    proxied = _ollama_chunks(proxy.url, api, stream)
    assert proxied == direct
    assert len(direct) == (7 if stream else 1)


def test_the_ollama_client_lists_and_shows_models_through_it(fake, proxy):
    assert ollama.Client(host=proxy.url).list() == ollama.Client(host=fake.url).list()
    assert ollama.Client(host=proxy.url).ps() == ollama.Client(host=fake.url).ps()


def _openai(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base, api_key="sk-test-not-stored", max_retries=0)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_the_openai_client_sees_the_same(fake: FakeServer, proxy: ProxyProcess, stream):
    def chat(base: str) -> list[dict[str, Any]]:
        out = _openai(base).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5,
            stream=stream, **({"stream_options": {"include_usage": True}} if stream else {}),
        )  # fmt: skip
        chunks = list(out) if stream else [out]
        return [_without(c.model_dump(), {"id"}) for c in chunks]  # type: ignore[union-attr]

    direct, proxied = chat(fake.openai_url), chat(proxy.openai_url)
    assert proxied == direct
    assert len(direct) == (1 + 5 + 1 + 1 if stream else 1)  # role, tokens, finish, usage


def test_the_openai_client_completions_and_models(fake, proxy):
    def complete(base: str) -> list[dict[str, Any]]:
        out = _openai(base).completions.create(model=MODEL, prompt="hi", max_tokens=4, stream=True)
        return [_without(c.model_dump(), {"id"}) for c in out]

    assert complete(proxy.openai_url) == complete(fake.openai_url)
    assert (
        _openai(proxy.openai_url).models.list().data == _openai(fake.openai_url).models.list().data
    )


RAW = (
    "".join(
        json.dumps({"model": "raw", "message": {"role": "assistant", "content": t}, "done": False})
        + "\n"
        for t in ["Hello", " wörld", " ✓"]
    )
    + json.dumps({"model": "raw", "done": True, "eval_count": 3})
    + "\n"
)


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_gets_the_same_bytes(fake: FakeServer, proxy: ProxyProcess):
    fake.configure(
        models={MODEL: Behavior(tokens=8, itl_ms=2), "raw": Behavior(raw=RAW, raw_chunk=17,
                                                                     trickle_ms=3)},
    )  # fmt: skip
    body = json.dumps({"model": "raw", "messages": [{"role": "user", "content": "x"}]})

    def curl(base: str) -> bytes:
        return subprocess.run(
            ["curl", "-sSN", "--fail-with-body", "-H", "Content-Type: application/json",
             "-d", body, f"{base}/api/chat"],
            capture_output=True, check=True, timeout=30,
        ).stdout  # fmt: skip

    assert curl(proxy.url) == curl(fake.url) == RAW.encode()


def test_httpx_sees_the_same_status_and_error_body(fake, proxy):
    body = {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}
    direct = httpx.post(f"{fake.url}/api/chat", json=body)
    proxied = httpx.post(f"{proxy.url}/api/chat", json=body)
    assert proxied.status_code == direct.status_code == 404
    assert proxied.content == direct.content
    assert proxied.headers["content-type"] == direct.headers["content-type"]
