"""Clients for abusing ``llmtop serve``: raw sockets (bodies that lie about their length, chunked
bodies that never end, readers that read nothing), valid bodies per endpoint, both APIs' error
shapes, and /metrics as numbers."""

from __future__ import annotations

import json
import socket
import struct
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

MODEL = "smollm2"
ENDPOINTS = ("/api/generate", "/api/chat", "/v1/completions", "/v1/chat/completions")
"""Every generating endpoint of both APIs."""


def api_of(path: str) -> str:
    return "ollama" if path.startswith("/api/") else "openai"


def body_for(path: str, n: int = 1, **extra: Any) -> dict[str, Any]:
    """A valid, greedy, non-streaming request for ``n`` tokens; ``extra`` overrides fields, and
    for Ollama an ``options`` dict is merged into the default options."""
    hi = [{"role": "user", "content": "Hi"}]
    if api_of(path) == "ollama":
        options = {"num_predict": n, "temperature": 0} | extra.pop("options", {})
        base: dict[str, Any] = {"model": MODEL, "stream": False, "options": options}
        base |= {"prompt": "Hi"} if path == "/api/generate" else {"messages": hi}
    else:
        base = {"model": MODEL, "max_tokens": n, "temperature": 0}
        base |= {"prompt": "Hi"} if path == "/v1/completions" else {"messages": hi}
    return base | extra


def error_text(path: str, reply: dict[str, Any]) -> str:
    """The message of an error reply, checked to be in its API's shape."""
    if api_of(path) == "ollama":
        assert set(reply) == {"error"} and isinstance(reply["error"], str), reply
        return reply["error"]
    err = reply["error"]
    assert set(err) == {"message", "type", "param", "code"}, reply
    assert err["type"] in ("invalid_request_error", "server_error"), reply
    return err["message"]


def finish_of(path: str, reply: dict[str, Any]) -> tuple[str, int, int]:
    """(finish reason, output tokens, prompt tokens) of a non-streamed answer."""
    if api_of(path) == "ollama":
        return reply["done_reason"], reply["eval_count"], reply["prompt_eval_count"]
    usage = reply["usage"]
    return reply["choices"][0]["finish_reason"], usage["completion_tokens"], usage["prompt_tokens"]


def text_of(path: str, reply: dict[str, Any]) -> str:
    if path == "/api/generate":
        return reply["response"]
    if path == "/api/chat":
        return reply["message"]["content"]
    choice = reply["choices"][0]
    return choice["text"] if path == "/v1/completions" else choice["message"]["content"]


@dataclass(frozen=True, slots=True)
class RawReply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def connect(port: int, *, rcvbuf: int | None = None, timeout: float = 30) -> socket.socket:
    """A TCP connection to the server (``rcvbuf``: a small receive window, set before the
    handshake so the window the server sees is small from the start)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    return sock


def request_head(path: str, port: int, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}",
             "Content-Type: application/json", *headers]  # fmt: skip
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_reply(sock: socket.socket) -> RawReply:
    """One HTTP response with a Content-Length body (what the server's JSON errors are)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a full response: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the response body"
        rest += chunk
    return RawReply(int(status_line.split()[1]), headers, rest[:length])


def close_hard(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a killed client does: the server sees it at once."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def metrics(http: httpx.Client) -> dict[str, float]:
    """/metrics samples keyed by name (and labels other than model_name)."""
    out = {}
    for fam in text_string_to_metric_families(http.get("/metrics").text):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "model_name")
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


ABORTED = "vllm:request_success_total{finished_reason=abort}"
RUNNING = "vllm:num_requests_running"
