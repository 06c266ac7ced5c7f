"""The Ollama backend: /api/chat and /api/generate as NDJSON streams, Ollama's own timings kept
beside the client's clock (eval_count, eval_duration, prompt_eval_*, load_duration, total_duration).

Also the backend of the in-repo engine (``llmtop serve`` speaks the same API). Streaming goes
through collectors/http.py; see there why aiohttp and how t0 and chunk times are taken.
"""

from __future__ import annotations

import json
import os
from typing import Any

from llmtop.collectors.http import HttpClient, base_url, one_line
from llmtop.collectors.streaming import (
    RequestState,
    StreamError,
    StreamParser,
    loads_json,
    reported_count,
    reported_ns,
    request_params,
    stream_request,
)
from llmtop.core.errors import SourceError
from llmtop.core.events import ServerTimings, TokenReceived
from llmtop.core.requests import Emit, GenerationRequest, Timeouts

DEFAULT_HOST = "http://127.0.0.1:11434"
_TOP_LEVEL = frozenset(
    {"keep_alive", "think", "format", "raw", "template", "images", "tools", "context"}
)
"""``GenerationRequest.extra`` keys that Ollama takes beside ``options`` rather than inside it."""


def ollama_base_url(url: str | None = None) -> str:
    """Ollama's base URL from ``url``, else ``OLLAMA_HOST``, read as the ollama client reads it
    (``host``, ``host:port``, ``:port``, or a full URL; a bare host gets port 11434)."""
    raw = url if url else os.environ.get("OLLAMA_HOST", "") or DEFAULT_HOST
    return base_url(raw, default_port=11434)


def ollama_timings(obj: dict[str, Any]) -> ServerTimings:
    """Ollama's final line as ``ServerTimings`` (durations in ns, as Ollama sends them)."""
    reason = obj.get("done_reason")
    return ServerTimings(
        prompt_tokens=reported_count(obj.get("prompt_eval_count")),
        output_tokens=reported_count(obj.get("eval_count")),
        load_ns=reported_ns(obj.get("load_duration")),
        prompt_eval_ns=reported_ns(obj.get("prompt_eval_duration")),
        eval_ns=reported_ns(obj.get("eval_duration")),
        total_ns=reported_ns(obj.get("total_duration")),
        done_reason=reason if isinstance(reason, str) else None,
    )


class NdjsonParser(StreamParser):
    """One JSON object per line; content in ``message.content`` (chat) or ``response`` (generate).

    ``thinking`` text counts as content: those tokens are generated (and in ``eval_count``) too.
    """

    expected = "NDJSON"

    def __init__(self, state: RequestState, chat: bool) -> None:
        super().__init__(state)
        self.chat = chat

    def accepts(self, content_type: str) -> str | None:
        return "stream" if not content_type or "json" in content_type else None

    def feed(self, lines: list[str], t_ns: int) -> None:
        st = self.st
        emit = st.emit
        run_id, rid = st.run_id, st.request_id
        loads = loads_json
        chat = self.chat
        for line in lines:
            try:
                obj = loads(line)
            except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
                if not line.strip():
                    continue
                raise StreamError(
                    "protocol",
                    f"malformed line after {st.chunks} chunks (not JSON): {one_line(line, 80)}",
                ) from None
            try:
                if chat:
                    msg = obj.get("message")
                    text = msg.get("content") if msg else None
                    think = msg.get("thinking") if msg else None
                else:
                    text = obj.get("response")
                    think = obj.get("thinking")
                if text or think:
                    n = len(text or "") + len(think or "")  # before counting: TypeError on 5
                    i = st.chunks
                    st.chunks = i + 1
                    st.tokens += 1
                    if st.t_first_ns is None:
                        st.t_first_ns = t_ns
                    st.t_last_ns = t_ns
                    emit(TokenReceived(run_id, rid, i, t_ns, 1, n))
                if obj.get("done"):
                    st.finish(t_ns, ollama_timings(obj))
                    return
                if "error" in obj:
                    raise StreamError(
                        "protocol",
                        f"server error after {st.chunks} chunks: {one_line(obj['error'])}",
                    )
            except (AttributeError, TypeError):
                raise StreamError(
                    "protocol", f"unexpected line after {st.chunks} chunks: {one_line(line, 80)}"
                ) from None


class OllamaBackend:
    """Streams requests from an Ollama server (or anything speaking its API).

    Args:
        url: the server (default: ``OLLAMA_HOST``, else http://127.0.0.1:11434).
        timeouts: per-request limits.
        max_connections: pool size (``0``: one connection per concurrent request).
        label: how messages name the server.
    """

    name = "ollama"

    def __init__(
        self,
        url: str | None = None,
        *,
        timeouts: Timeouts | None = None,
        max_connections: int = 0,
        label: str = "Ollama",
    ) -> None:
        self.base_url = ollama_base_url(url)
        self.timeouts = timeouts or Timeouts()
        self.label = label
        self._http = HttpClient(self.base_url, self.timeouts, max_connections=max_connections)
        self._chat = self._http.url("/api/chat")
        self._generate = self._http.url("/api/generate")

    def __repr__(self) -> str:
        return f"OllamaBackend({self.base_url!r})"

    async def __aenter__(self) -> OllamaBackend:
        await self._http.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.close()

    @staticmethod
    def body(req: GenerationRequest) -> dict[str, Any]:
        """The JSON body Ollama gets for ``req``."""
        options: dict[str, Any] = {}
        for key, value in (("num_predict", req.max_tokens), ("temperature", req.temperature),
                           ("top_p", req.top_p), ("top_k", req.top_k), ("seed", req.seed)):  # fmt: skip
            if value is not None:
                options[key] = value
        if req.stop:
            options["stop"] = list(req.stop)
        body: dict[str, Any] = {"model": req.model, "stream": True}
        if req.api == "chat" and req.messages:
            body["messages"] = [{"role": role, "content": text} for role, text in req.messages]
        elif req.api == "chat":
            messages = [{"role": "system", "content": req.system}] if req.system else []
            body["messages"] = [*messages, {"role": "user", "content": req.prompt}]
        else:
            body["prompt"] = req.prompt
            if req.system:
                body["system"] = req.system
        for key, value in req.extra.items():
            if key in _TOP_LEVEL:
                body[key] = value
            else:
                options[key] = value
        if options:
            body["options"] = options
        return body

    async def stream(self, req: GenerationRequest, emit: Emit) -> None:
        """Send ``req`` and emit its events (never raises for a failed request; see base.py)."""
        body = json.dumps(self.body(req)).encode()
        state = RequestState(req, emit, request_params(req, self.name))
        chat = req.api == "chat"
        await stream_request(
            self._http, self._chat if chat else self._generate, lambda: body, state,
            lambda st: NdjsonParser(st, chat),
        )  # fmt: skip

    async def list_models(self) -> list[str]:
        """Model names from /api/tags (``name:tag``)."""
        status, obj = await self._http.get_json(
            "/api/tags", self.label, self.timeouts.connect_s + 5
        )
        if status != 200 or not isinstance(obj, dict) or not isinstance(obj.get("models"), list):
            raise SourceError(
                f"{self.base_url}/api/tags answered HTTP {status} without a model list: "
                f"is this an {self.label} server?"
            )
        return [str(m.get("name") or m.get("model")) for m in obj["models"] if isinstance(m, dict)]

    async def check(self, model: str | None) -> None:
        """Raise ``SourceError`` naming the URL if the server is down or lacks ``model``."""
        names = await self.list_models()
        if model is None or _has_model(names, model):
            return
        have = ", ".join(sorted(names)) if names else "no models"
        hint = f" (try `ollama pull {model}`)" if self.label == "Ollama" else ""
        raise SourceError(f"model {model!r} not found at {self.base_url}; it has: {have}{hint}")


def _has_model(names: list[str], model: str) -> bool:
    """Ollama's names: ``llama3.2`` means ``llama3.2:latest``."""

    def norm(n: str) -> str:
        return n if ":" in n else f"{n}:latest"

    return norm(model) in {norm(n) for n in names}
