"""The OpenAI-compatible backend: /v1/chat/completions and /v1/completions as SSE streams, for
vLLM, llama.cpp's server, TGI, SGLang, LM Studio and the in-repo engine.

Token counts: ``stream_options.include_usage`` is asked for, so the server's own count arrives in
the final usage chunk; a server that refuses the field (HTTP 400/422 naming it) is asked again
without it, once per run, and one that ignores it leaves the count to the chunks we saw.
llama.cpp's ``timings`` object, when present, fills the server's prefill and decode durations.

The API key comes from an environment variable (``OPENAI_API_KEY``, or the one named with
``--api-key-env``) and lives only in the HTTP session's headers: never in events, messages or
the database.

SSE is read by a small decoder here rather than httpx-sse, whose decoder is private API and runs
on httpx responses; ours follows the same spec rules (``data:`` lines joined with newlines, a
blank line ends an event, ``:`` comments, ``event:`` names; CR, LF and CRLF line ends) and the
tests check it against httpx-sse's decoder on the awkward cases.
"""

from __future__ import annotations

import json
import os
from typing import Any

from llmtop.collectors.http import HttpClient, api_key_from_env, base_url, one_line
from llmtop.collectors.streaming import (
    MAX_LINE_CHARS,
    RequestState,
    StreamError,
    StreamParser,
    loads_json,
    reported_count,
    reported_ms_as_ns,
    request_params,
    stream_request,
)
from llmtop.core.errors import SourceError
from llmtop.core.events import ServerTimings, TokenReceived
from llmtop.core.requests import Emit, GenerationRequest, Timeouts

DEFAULT_URL = "http://127.0.0.1:8000/v1"
"""vLLM's default; ``OPENAI_BASE_URL`` overrides it as it does for the openai client."""


def openai_base_url(url: str | None = None) -> str:
    """The API base (``.../v1``) from ``url``, else ``OPENAI_BASE_URL``; a bare host gets ``/v1``."""
    raw = url if url else os.environ.get("OPENAI_BASE_URL", "") or DEFAULT_URL
    return base_url(raw, default_path="/v1")


class SseParser(StreamParser):
    """Server-sent events whose data is an OpenAI chunk, ending with ``data: [DONE]``."""

    expected = "text/event-stream"

    def __init__(self, state: RequestState, chat: bool) -> None:
        super().__init__(state)
        self.chat = chat
        self.data: list[str] = []
        self.data_chars = 0
        """Characters in ``data`` once it holds more than one line."""
        self.event = ""
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.timings: dict[str, Any] | None = None

    def accepts(self, content_type: str) -> str | None:
        if "event-stream" in content_type:
            return "stream"
        return "document" if "json" in content_type else None

    def feed(self, lines: list[str], t_ns: int) -> None:
        data = self.data
        for line in lines:
            if line:
                if line[:5] == "data:":
                    data.append(line[6:] if line[5:6] == " " else line[5:])
                    if len(data) > 1:  # rare: an event of several data lines
                        self._grew(data)
                elif line[0] != ":":  # ":" starts a comment (keep-alive pings)
                    name, _, value = line.partition(":")
                    value = value[1:] if value[:1] == " " else value
                    if name == "event":
                        self.event = value
                    elif name == "data":  # a bare "data" line: an empty data field
                        data.append(value)
                        if len(data) > 1:
                            self._grew(data)
                continue
            if data:  # a blank line ends the event (none is dispatched when its data is empty)
                payload = data[0] if len(data) == 1 else "\n".join(data)
                data.clear()
                self.data_chars = 0
                event, self.event = self.event, ""
                if payload and self._event(event, payload, t_ns):
                    return
            else:
                self.event = ""

    def _grew(self, data: list[str]) -> None:
        """Bound an event's size: data lines with no blank line after them would otherwise pile
        up without end (each line resets the chunk timeout)."""
        self.data_chars += len(data[-1]) + (len(data[0]) if len(data) == 2 else 0)
        if self.data_chars > MAX_LINE_CHARS:
            raise StreamError(
                "protocol",
                f"an event longer than {MAX_LINE_CHARS:,} characters after {self.st.chunks} "
                "chunks: not a token stream",
            )

    def _event(self, event: str, payload: str, t_ns: int) -> bool:
        st = self.st
        if payload == "[DONE]":
            self._finish(t_ns)
            return True
        try:
            obj = loads_json(payload)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            raise StreamError(
                "protocol",
                f"malformed event after {st.chunks} chunks (not JSON): {one_line(payload, 80)}",
            ) from None
        try:
            if event == "error" or obj.get("error"):
                err = obj.get("error", obj)
                msg = err.get("message", err) if isinstance(err, dict) else err
                raise StreamError(
                    "protocol", f"server error after {st.chunks} chunks: {one_line(msg)}"
                )
            choices = obj.get("choices")
            if choices:
                c = choices[0]
                if self.chat:
                    delta = c.get("delta") or {}
                    text = delta.get("content")
                    extra = delta.get("reasoning_content") or delta.get("reasoning")
                else:
                    text = c.get("text")
                    extra = None
                if text or extra:
                    n = len(text or "") + len(extra or "")  # before counting: TypeError on 5
                    i = st.chunks
                    st.chunks = i + 1
                    st.tokens += 1
                    if st.t_first_ns is None:
                        st.t_first_ns = t_ns
                    st.t_last_ns = t_ns
                    st.emit(TokenReceived(st.run_id, st.request_id, i, t_ns, 1, n))
                reason = c.get("finish_reason")
                if reason:
                    self.finish_reason = reason
                    self.timings = obj.get("timings") or self.timings
            usage = obj.get("usage")
            if usage:
                self.usage = usage
                self.timings = obj.get("timings") or self.timings
        except (AttributeError, TypeError, IndexError, KeyError):
            raise StreamError(
                "protocol", f"unexpected event after {st.chunks} chunks: {one_line(payload, 80)}"
            ) from None
        return False

    def _finish(self, t_ns: int) -> None:
        u = self.usage if isinstance(self.usage, dict) else {}
        tm = self.timings if isinstance(self.timings, dict) else {}
        self.st.finish(
            t_ns,
            ServerTimings(
                prompt_tokens=reported_count(u.get("prompt_tokens")),
                output_tokens=reported_count(u.get("completion_tokens")),
                prompt_eval_ns=reported_ms_as_ns(tm.get("prompt_ms")),
                eval_ns=reported_ms_as_ns(tm.get("predicted_ms")),
                done_reason=self.finish_reason if isinstance(self.finish_reason, str) else None,
            ),
        )

    def feed_eof(self, t_ns: int) -> None:
        if self.data:  # the last event had no blank line after it
            self.feed([""], t_ns)
        if not self.st.done and self.finish_reason is not None:
            self._finish(t_ns)  # a server that ends without [DONE] but did say it finished
        if not self.st.done:
            super().feed_eof(t_ns)

    def feed_document(self, text: str, t_ns: int) -> None:
        """The server ignored ``stream`` and sent the whole answer: one chunk, TTFT = E2E."""
        try:
            obj = json.loads(text)
            c = obj["choices"][0]
            content = c["message"].get("content") if self.chat else c.get("text")
            self.usage = obj.get("usage")
            self.finish_reason = c.get("finish_reason")
            text_len = len(content) if content else 0  # TypeError: content that is a number
        except (ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError):
            raise StreamError("protocol", f"unexpected JSON answer: {one_line(text, 80)}") from None
        st = self.st
        if content:
            st.chunks = st.tokens = 1
            st.t_first_ns = st.t_last_ns = t_ns
            st.emit(TokenReceived(st.run_id, st.request_id, 0, t_ns, 1, text_len))
        self._finish(t_ns)


class OpenAIBackend:
    """Streams requests from an OpenAI-compatible server.

    Args:
        url: the API base, e.g. ``http://host:8000/v1`` (default: ``OPENAI_BASE_URL``, else vLLM's
            http://127.0.0.1:8000/v1); a URL without a path gets ``/v1``.
        api_key_env: the environment variable holding the key (default: ``OPENAI_API_KEY`` if set).
        timeouts: per-request limits.
        max_connections: pool size (``0``: one connection per concurrent request).
    """

    name = "openai"

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key_env: str | None = None,
        timeouts: Timeouts | None = None,
        max_connections: int = 0,
    ) -> None:
        self.base_url = openai_base_url(url)
        self.timeouts = timeouts or Timeouts()
        key = api_key_from_env(api_key_env)
        self.has_api_key = key is not None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = HttpClient(self.base_url, self.timeouts, headers, max_connections)
        self._chat = self._http.url("/chat/completions")
        self._completions = self._http.url("/completions")
        self.include_usage = True
        """Ask for ``stream_options.include_usage``; turned off when the server refuses it."""

    def __repr__(self) -> str:
        return f"OpenAIBackend({self.base_url!r}, api_key={'set' if self.has_api_key else 'none'})"

    async def __aenter__(self) -> OpenAIBackend:
        await self._http.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.close()

    def body(self, req: GenerationRequest) -> dict[str, Any]:
        """The JSON body for ``req`` (with ``stream_options`` while the server accepts it)."""
        body: dict[str, Any] = {"model": req.model, "stream": True}
        if req.api == "chat" and req.messages:
            body["messages"] = [{"role": role, "content": text} for role, text in req.messages]
        elif req.api == "chat":
            messages = [{"role": "system", "content": req.system}] if req.system else []
            body["messages"] = [*messages, {"role": "user", "content": req.prompt}]
        else:
            body["prompt"] = req.prompt if not req.system else f"{req.system}\n\n{req.prompt}"
        if self.include_usage:
            body["stream_options"] = {"include_usage": True}
        for key, value in (("max_tokens", req.max_tokens), ("temperature", req.temperature),
                           ("top_p", req.top_p), ("top_k", req.top_k), ("seed", req.seed)):  # fmt: skip
            if value is not None:
                body[key] = value
        if req.stop:
            body["stop"] = list(req.stop)
        body.update(req.extra)
        return body

    def _usage_refused(self, status: int, message: str) -> bool:
        if self.include_usage and status in (400, 422) and "stream_options" in message:
            self.include_usage = False
            return True
        return False

    async def stream(self, req: GenerationRequest, emit: Emit) -> None:
        """Send ``req`` and emit its events (never raises for a failed request; see base.py)."""
        cache: dict[bool, bytes] = {}

        def make_body() -> bytes:
            if self.include_usage not in cache:
                cache[self.include_usage] = json.dumps(self.body(req)).encode()
            return cache[self.include_usage]

        state = RequestState(req, emit, request_params(req, self.name))
        chat = req.api == "chat"
        await stream_request(
            self._http, self._chat if chat else self._completions, make_body, state,
            lambda st: SseParser(st, chat), retry_on_status=self._usage_refused,
        )  # fmt: skip

    async def list_models(self) -> list[str]:
        """Model ids from ``/models``."""
        status, obj = await self._http.get_json(
            "/models", "the OpenAI-compatible server", self.timeouts.connect_s + 5
        )
        if status in (401, 403):
            raise SourceError(
                f"{self.base_url}/models answered HTTP {status}: the server wants an API key "
                "(set OPENAI_API_KEY, or name the variable with --api-key-env)"
            )
        if status != 200 or not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
            raise SourceError(
                f"{self.base_url}/models answered HTTP {status} without a model list: "
                "is this the API base of an OpenAI-compatible server (it usually ends in /v1)?"
            )
        return [str(m.get("id")) for m in obj["data"] if isinstance(m, dict)]

    async def check(self, model: str | None) -> None:
        """Raise ``SourceError`` naming the URL if the server is down or lacks ``model``."""
        names = await self.list_models()
        if model is None or model in names:
            return
        have = ", ".join(sorted(names)) if names else "no models"
        raise SourceError(f"model {model!r} not found at {self.base_url}; it has: {have}")
