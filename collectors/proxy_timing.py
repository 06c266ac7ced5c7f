"""Timing the requests real clients send through ``llmtop proxy``, with ``record``'s parsers.

What a client asked is read from its request body (``observe``): the API (Ollama or OpenAI, chat
or generate), the model, whether it streams, its sampling settings, and its prompt's length and
hash; the prompt itself only when the proxy was told to keep prompts. Headers are never read
here, so an API key cannot reach an event.

The answer is timed beside the relay (``AnswerTimer``): its decoded body is pushed read by read,
each stamped with the time it came off the upstream's socket, through the same ``LineFeed`` into
the same ``NdjsonParser``/``SseParser`` as ``record`` (so TTFT, ITL and the token counts mean
exactly what they mean there). The bytes themselves reach the client before any of this runs; a
parser that gives up records the request as failed and nothing else changes.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from llmtop.collectors.http import error_from_body, one_line
from llmtop.collectors.ollama import NdjsonParser
from llmtop.collectors.openai_compat import SseParser
from llmtop.collectors.streaming import (
    MAX_ERROR_BODY,
    LineFeed,
    RequestState,
    StreamError,
    StreamParser,
)
from llmtop.core.events import RequestStarted
from llmtop.core.requests import Api, Emit, GenerationRequest

Wire = Literal["ollama", "openai"]

GENERATION_ENDPOINTS: dict[str, tuple[Wire, Api]] = {
    "/api/chat": ("ollama", "chat"),
    "/api/generate": ("ollama", "generate"),
    "/v1/chat/completions": ("openai", "chat"),
    "/v1/completions": ("openai", "generate"),
}
"""The paths whose answers are timed; every other path is relayed untimed."""
MAX_DOCUMENT = 32 << 20
"""The most of a non-streamed OpenAI answer kept to read its token count (it is relayed whole
whatever its size; a larger one is recorded as a protocol error)."""


def endpoint(method: str, path: str) -> tuple[Wire, Api] | None:
    """``(wire, api)`` when ``method path`` asks for a generation, else ``None``."""
    if method != "POST":
        return None
    return GENERATION_ENDPOINTS.get(path.rstrip("/") or "/")


@dataclass(frozen=True, slots=True)
class Observed:
    """What one client's generation request asks, read from its body."""

    wire: Wire
    api: Api
    path: str
    model: str = ""
    stream: bool = True
    prompt_chars: int = 0
    prompt_hash: str = ""
    prompt: str | None = None
    """The prompt as JSON (``{"messages": [...]}`` or ``{"prompt": ..., "system": ...}``), only
    when prompts are kept."""
    max_tokens: int | None = None
    temperature: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    """What ``requests.params_json`` keeps: the API, the sampling settings that were set."""


def _text_of(content: Any) -> str:
    """The text of a message's content: a string, or OpenAI's list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def _number(v: Any) -> float | None:
    return float(v) if type(v) in (int, float) else None


def _int(v: Any) -> int | None:
    return v if type(v) is int else None


def _asked(obj: dict[str, Any], api: Api) -> tuple[dict[str, Any], int]:
    """The prompt of a request as one JSON-able value (the conversation's roles and texts, or
    the prompt and system text), and its length in characters."""
    if api == "chat":
        raw = obj.get("messages")
        messages: list[dict[str, str]] = [
            {"role": str(m.get("role", "")), "content": _text_of(m.get("content"))}
            for m in (raw if isinstance(raw, list) else [])
            if isinstance(m, dict)
        ]
        return {"messages": messages}, sum(len(m["content"]) for m in messages)
    prompt = obj.get("prompt")
    if isinstance(prompt, list):  # OpenAI completions: several prompts, or token ids
        prompt = "".join(p for p in prompt if isinstance(p, str))
    text = prompt if isinstance(prompt, str) else ""
    system = obj.get("system")
    if isinstance(system, str):
        return {"prompt": text, "system": system}, len(text) + len(system)
    return {"prompt": text}, len(text)


def observe(method: str, path: str, body: bytes, *, store_prompts: bool = False) -> Observed | None:
    """What a request asks, or ``None`` when it is not a generation (relayed untimed).

    A body that is not a JSON object still gives an ``Observed`` (the upstream will refuse it,
    and the refusal is worth recording), with what could be read.
    """
    found = endpoint(method, path)
    if found is None:
        return None
    wire, api = found
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        obj = None
    if not isinstance(obj, dict):
        return Observed(wire, api, path, stream=wire == "ollama")
    asked, chars = _asked(obj, api)
    canonical = json.dumps(asked, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    model = obj.get("model")
    params: dict[str, Any] = {"api": api, "backend": wire}
    if wire == "ollama":
        stream = obj.get("stream", True) is not False
        raw_options = obj.get("options")
        options: dict[str, Any] = raw_options if isinstance(raw_options, dict) else {}
        max_tokens = _int(options.get("num_predict"))
        temperature = _number(options.get("temperature"))
        for key, value in options.items():
            if key not in ("num_predict", "temperature"):
                params.setdefault("options", {})[key] = value
    else:
        stream = obj.get("stream") is True
        max_tokens = _int(obj.get("max_tokens", obj.get("max_completion_tokens")))
        temperature = _number(obj.get("temperature"))
        for key in ("top_p", "top_k", "seed", "stop"):
            if key in obj:
                params[key] = obj[key]
    params["stream"] = stream
    return Observed(
        wire, api, path,
        model=model if isinstance(model, str) else "",
        stream=stream,
        prompt_chars=chars,
        prompt_hash=hashlib.sha256(canonical.encode()).hexdigest()[:16],
        prompt=canonical if store_prompts else None,
        max_tokens=max_tokens,
        temperature=temperature,
        params=params,
    )  # fmt: skip


class ObservedState(RequestState):
    """``RequestState`` whose ``RequestStarted`` says who asked what (client, model, API, path,
    prompt hash): the one difference between a request observed and one sent by ``record``."""

    __slots__ = ("client", "obs")

    def __init__(self, run_id: int, request_id: int, obs: Observed, client: str, emit: Emit):
        req = GenerationRequest(
            run_id=run_id, request_id=request_id, model=obs.model, prompt="", api=obs.api,
            max_tokens=obs.max_tokens, temperature=obs.temperature,
        )  # fmt: skip
        super().__init__(req, emit, obs.params)
        self.obs = obs
        self.client = client

    def written(self, t_ns: int) -> None:
        self.t0_ns = t_ns
        if self.started:
            return
        self.started = True
        o = self.obs
        self.emit(
            RequestStarted(
                self.run_id, self.request_id, t_ns, step=o.model,
                prompt_label=self.client.rpartition(":")[0] or self.client,
                prompt_chars=o.prompt_chars, max_tokens=o.max_tokens, temperature=o.temperature,
                params=self.params, model=o.model, api=o.api, path=o.path, client=self.client,
                prompt_hash=o.prompt_hash, prompt=o.prompt,
            )
        )  # fmt: skip

    def parser(self) -> StreamParser:
        """The parser ``record`` uses for this API."""
        chat = self.obs.api == "chat"
        if self.obs.wire == "ollama":
            return NdjsonParser(self, chat)
        return SseParser(self, chat)


def error_body(path: str, status: int, message: str) -> bytes:
    """An error answer in the shape the client's API uses (Ollama or OpenAI), by path."""
    if path.startswith("/v1/"):
        err = {"message": message, "type": "upstream_error", "param": None, "code": status}
        return json.dumps({"error": err}).encode()
    return json.dumps({"error": message}).encode()


class AnswerTimer:
    """Times one answer from its decoded body as it arrives, pushed by the relay's protocol
    callback with the time its bytes came off the socket: ``head`` once, ``body`` per read,
    ``end`` once. The bytes reach the client before any of this runs; nothing here raises.
    Records exactly one end of the request: finished, or failed (``http_status``,
    ``protocol``: a cut, a stream the parser refuses)."""

    __slots__ = ("_lines", "_mode", "_parser", "_parts", "_reason", "_size", "_status", "_t", "st")

    def __init__(self, st: ObservedState) -> None:
        self.st = st
        self._mode = ""
        """``stream``, ``document``, ``error`` (HTTP >= 400), or ``""``: nothing more to read."""
        self._status = 0
        self._reason = ""
        self._parser: StreamParser | None = None
        self._lines: LineFeed | None = None
        self._parts: list[bytes] = []
        self._size = 0
        self._t = 0

    def head(self, status: int, reason: str, content_type: str) -> None:
        """The answer's status line and Content-Type arrived."""
        st = self.st
        self._status, self._reason = status, reason
        if status >= 400:
            self._mode = "error"
            return
        parser = st.parser()
        mode = parser.accepts(content_type.lower())
        if mode is None:
            st.fail("protocol", f"unexpected Content-Type {content_type!r} from POST {st.obs.path}")
            return
        self._parser, self._mode = parser, mode
        if mode == "stream":
            self._lines = LineFeed(parser, st)

    def body(self, data: bytes, t_ns: int) -> None:
        """One read of the decoded body, arrived at ``t_ns``."""
        mode = self._mode
        if mode == "stream":
            assert self._lines is not None
            try:
                if self._lines.push(data, t_ns):
                    self._mode = ""
            except StreamError as e:
                self._mode = ""
                self.st.fail(e.kind, e.message, e.http_status)
        elif mode == "document":
            self._t = t_ns
            self._size += len(data)
            if self._size <= MAX_DOCUMENT:
                self._parts.append(data)
        elif mode == "error":
            room = MAX_ERROR_BODY - self._size
            if room > 0:
                self._parts.append(data[:room])
                self._size += min(room, len(data))

    def end(self, cut: bool, t_ns: int) -> None:
        """The body ended at ``t_ns``, complete or ``cut`` (the upstream closed it early);
        nothing when no answer began (``head`` never came: the relay records that itself)."""
        st = self.st
        if not self._status:
            return
        mode, self._mode = self._mode, ""
        if mode == "error":
            st.fail(
                "http_status",
                f"HTTP {self._status}{f' {self._reason}' if self._reason else ''} from POST "
                f"{st.obs.path}: {error_from_body(b''.join(self._parts))}",
                self._status,
            )
            return
        if st.done:
            return
        if cut:
            st.fail(
                "protocol",
                f"stream cut after {st.chunks} chunks: the upstream closed the connection "
                "before the final chunk",
            )
            return
        try:
            if mode == "stream":
                assert self._lines is not None
                self._lines.end(t_ns)
            elif mode == "document":
                self._document()
        except StreamError as e:
            st.fail(e.kind, e.message, e.http_status)
        if not st.done:
            st.fail(
                "protocol", f"the answer ended without its final chunk after {st.chunks} chunks"
            )

    def _document(self) -> None:
        """A non-streamed OpenAI answer: one chunk when it has all arrived (TTFT = E2E), as
        ``record`` counts a server that ignores ``stream``."""
        st, parser = self.st, self._parser
        assert parser is not None
        if self._size > MAX_DOCUMENT:
            size = f"{self._size:,} bytes"
            st.fail("protocol", f"an answer of {size}, more than llmtop reads to time one")
            return
        try:
            text = codecs.decode(b"".join(self._parts), "utf-8")
            parser.feed_document(text, self._t or time.perf_counter_ns())
        except UnicodeDecodeError as e:
            st.fail("protocol", f"the answer is not valid UTF-8: {one_line(e.reason)}")
