"""Timing the requests real clients send through ``llmtop proxy``, with ``record``'s parsers.

What a client asked is read from its request body (``observe``): the API (Ollama or OpenAI, chat
or generate), the model, whether it streams, its sampling settings, and its prompt's length and
hash; the prompt itself only when the proxy was told to keep prompts. Headers are never read
here, so an API key cannot reach an event.

The answer is timed beside the relay (``time_answer``): its decoded body is read, each read
stamped as it returns, by the same ``read_stream`` into the same ``NdjsonParser``/``SseParser``
as ``record`` (so TTFT, ITL and the token counts mean exactly what they mean there). The bytes
themselves reach the client without waiting for any of this; a parser that gives up records the
request as failed and nothing else changes.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from llmtop.collectors.http import error_from_body, one_line
from llmtop.collectors.ollama import NdjsonParser
from llmtop.collectors.openai_compat import SseParser
from llmtop.collectors.streaming import (
    MAX_ERROR_BODY,
    RequestState,
    StreamError,
    StreamParser,
    read_stream,
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

Read = Callable[[], Awaitable[bytes]]
"""One read of an answer's decoded body: ``b""`` at its end, ``ConnectionResetError`` if cut."""


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


async def _drain(readany: Read) -> None:
    while await readany():
        pass


async def time_answer(
    readany: Read, st: ObservedState, status: int, reason: str, content_type: str
) -> None:
    """Time one answer from its decoded body, as it arrives (its bytes reach the client on
    their own; nothing here can hold them back). Ends with the body; records exactly one end
    of the request: finished, failed (``http_status``, ``protocol``: a cut, a stream the
    parser refuses), never an exception."""
    try:
        if status >= 400:
            await _time_error(readany, st, status, reason)
            return
        parser = st.parser()
        mode = parser.accepts(content_type.lower())
        if mode is None:
            st.fail("protocol", f"unexpected Content-Type {content_type!r} from POST {st.obs.path}")
        elif mode == "document":
            await _time_document(readany, st, parser)
        else:
            try:
                await read_stream(readany, parser, st)
            except StreamError as e:
                st.fail(e.kind, e.message, e.http_status)
        await _drain(readany)
        if not st.done:
            st.fail(
                "protocol", f"the answer ended without its final chunk after {st.chunks} chunks"
            )
    except ConnectionResetError:
        if not st.done:
            st.fail(
                "protocol",
                f"stream cut after {st.chunks} chunks: the upstream closed the connection "
                "before the final chunk",
            )


async def _time_error(readany: Read, st: ObservedState, status: int, reason: str) -> None:
    """An error answer (HTTP >= 400): ``http_status`` with the upstream's own message."""
    head = b""
    try:
        while data := await readany():
            if len(head) < MAX_ERROR_BODY:
                head += data[: MAX_ERROR_BODY - len(head)]
    finally:
        st.fail(
            "http_status",
            f"HTTP {status}{f' {reason}' if reason else ''} from POST {st.obs.path}: "
            f"{error_from_body(head)}",
            status,
        )


async def _time_document(readany: Read, st: ObservedState, parser: StreamParser) -> None:
    """A non-streamed OpenAI answer: one chunk when it has all arrived (TTFT = E2E), as
    ``record`` counts a server that ignores ``stream``."""
    parts: list[bytes] = []
    size = 0
    t = time.perf_counter_ns()
    while data := await readany():
        t = time.perf_counter_ns()
        size += len(data)
        if size <= MAX_DOCUMENT:
            parts.append(data)
    if size > MAX_DOCUMENT:
        st.fail("protocol", f"an answer of {size:,} bytes, more than llmtop reads to time one")
        return
    try:
        text = codecs.decode(b"".join(parts), "utf-8")
        parser.feed_document(text, t)
    except UnicodeDecodeError as e:
        st.fail("protocol", f"the answer is not valid UTF-8: {one_line(e.reason)}")
    except StreamError as e:
        st.fail(e.kind, e.message, e.http_status)
