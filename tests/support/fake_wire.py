"""The fake server's wire formats: Ollama NDJSON lines and OpenAI SSE events, error bodies and
the final line or usage chunk with timings taken from what was actually sent.

See servers.py for how to use the fake server.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .fake_faults import Ctx

_NS = 1_000_000


def request_limit(body: dict[str, Any]) -> int | None:
    opts = body.get("options") or {}
    for v in (opts.get("num_predict"), body.get("max_tokens"), body.get("max_completion_tokens")):
        if isinstance(v, int) and v >= 0:
            return v
    return None


def prompt_chars(body: dict[str, Any]) -> int:
    if "messages" in body:
        return sum(len(str(m.get("content", ""))) for m in body["messages"])
    return len(str(body.get("prompt", "")))


class Wire:
    """One API's bytes on the wire for one request."""

    content_type = "application/x-ndjson"
    headers_first = False
    """Send headers before the first token (vLLM) rather than with it (Ollama)."""

    def __init__(self, kind: str, body: dict[str, Any], seq: int) -> None:
        self.kind = kind
        self.body = body
        self.seq = seq
        self.model = str(body.get("model", ""))
        self.streaming = body.get("stream", True) is not False

    def preamble(self) -> bytes:
        return b""

    def chunk(self, text: str) -> bytes:
        if self.kind == "chat":
            obj: dict[str, Any] = {"model": self.model, "created_at": "2025-01-01T00:00:00.000000Z",
                                   "message": {"role": "assistant", "content": text}, "done": False}  # fmt: skip
        else:
            obj = {"model": self.model, "created_at": "2025-01-01T00:00:00.000000Z",
                   "response": text, "done": False}  # fmt: skip
        return json.dumps(obj, separators=(",", ":")).encode() + b"\n"

    def final_obj(self, ctx: Ctx, timings: bool) -> dict[str, Any]:
        obj = json.loads(self.chunk(""))
        obj.update(done=True, done_reason=ctx.done_reason)
        if self.kind == "generate":
            obj["context"] = [1, 2, 3]
        if timings:
            now = time.perf_counter_ns()
            first = ctx.t_first_send or now
            last = ctx.t_last_send or now
            load = int(ctx.beh.load_ms * _NS)
            first_k = min(ctx.beh.tokens_per_chunk, ctx.n_tokens)
            obj.update(
                total_duration=now - ctx.t_recv_ns,
                load_duration=load,
                prompt_eval_count=ctx.prompt_tokens,
                prompt_eval_duration=max(1, first - ctx.t_recv_ns - load),
                eval_count=ctx.sent_tokens,
                eval_duration=max(1, last - first + int(first_k * ctx.beh.itl_ms * _NS)),
            )
        return obj

    def final(self, ctx: Ctx, timings: bool = True) -> bytes:
        return json.dumps(self.final_obj(ctx, timings)).encode() + b"\n"

    def document(self, ctx: Ctx, text: str) -> dict[str, Any]:
        obj = self.final_obj(ctx, True)
        if self.kind == "chat":
            obj["message"]["content"] = text
        else:
            obj["response"] = text
        return obj

    def error_line(self, message: str) -> bytes:
        return json.dumps({"error": message}).encode() + b"\n"

    def malformed(self) -> bytes:
        return b'{"model":"' + self.model.encode() + b'","created_at":"2025-\n'

    def error_body(self, status: int) -> dict[str, Any]:
        return {"error": f"fake server error {status}"}

    def not_found_body(self, model: str) -> dict[str, Any]:
        return {"error": f'model "{model}" not found, try pulling it first'}


class OpenAIWire(Wire):
    content_type = "text/event-stream"
    headers_first = True

    def __init__(self, kind: str, body: dict[str, Any], seq: int) -> None:
        super().__init__(kind, body, seq)
        self.streaming = body.get("stream") is True
        self.usage = bool((body.get("stream_options") or {}).get("include_usage"))
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        self.head = {"id": f"{prefix}-{seq}",
                     "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
                     "created": 1735689600, "model": self.model}  # fmt: skip

    def _event(self, choice: dict[str, Any] | None, **extra: Any) -> bytes:
        obj = {**self.head, "choices": [] if choice is None else [choice], **extra}
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    def _choice(self, text: str | None, finish: str | None = None) -> dict[str, Any]:
        if self.kind == "chat":
            delta: dict[str, Any] = {} if text is None else {"content": text}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}

    def preamble(self) -> bytes:
        if self.kind != "chat":
            return b""
        return self._event({"index": 0, "delta": {"role": "assistant", "content": ""},
                            "logprobs": None, "finish_reason": None})  # fmt: skip

    def chunk(self, text: str) -> bytes:
        return self._event(self._choice(text))

    def _usage(self, ctx: Ctx) -> dict[str, int]:
        return {"prompt_tokens": ctx.prompt_tokens, "completion_tokens": ctx.sent_tokens,
                "total_tokens": ctx.prompt_tokens + ctx.sent_tokens}  # fmt: skip

    def final(self, ctx: Ctx, timings: bool = True) -> bytes:
        out = self._event(self._choice(None, ctx.done_reason))
        if timings and self.usage:
            out += self._event(None, usage=self._usage(ctx))
        return out + b"data: [DONE]\n\n"

    def document(self, ctx: Ctx, text: str) -> dict[str, Any]:
        if self.kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "finish_reason": ctx.done_reason}  # fmt: skip
            obj = {**self.head, "object": "chat.completion"}
        else:
            choice = {"index": 0, "text": text, "finish_reason": ctx.done_reason}
            obj = dict(self.head)
        return {**obj, "choices": [choice], "usage": self._usage(ctx)}

    def error_line(self, message: str) -> bytes:
        return (
            b"data: "
            + json.dumps({"error": {"message": message, "type": "server_error"}}).encode()
            + b"\n\n"
        )

    def malformed(self) -> bytes:
        return b'data: {"id":"' + self.head["id"].encode() + b'","choices":[{"delta":\n\n'

    def error_body(self, status: int) -> dict[str, Any]:
        return {"error": {"message": f"fake server error {status}", "type": "server_error",
                          "param": None, "code": status}}  # fmt: skip

    def not_found_body(self, model: str) -> dict[str, Any]:
        return {"error": {"message": f"The model `{model}` does not exist.",
                          "type": "invalid_request_error", "param": "model",
                          "code": "model_not_found"}}  # fmt: skip


def wire_for(api: str, kind: str, body: dict[str, Any], seq: int) -> Wire:
    return (OpenAIWire if api == "openai" else Wire)(kind, body, seq)
