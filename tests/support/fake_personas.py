"""Real servers' faces for the fake server: what vLLM 0.32 and llama.cpp's llama-server answered
on this machine (tests/data/real_servers/, copied from the shared real-servers folder), replayed.

A persona gives the fake server the real one's ``/metrics`` page (the recorded text, its counters
and histogram sums moved by the requests the fake serves, the way the real server moves them),
its response headers (``Server: llama.cpp``, ``Keep-Alive: timeout=5, max=100``), its version
document (vLLM ``/version``, llama.cpp ``/props``), its ``/health``, and llama.cpp's 501 when
started without ``--metrics``::

    FakeServer({"m": Behavior()}, persona=Persona("llama.cpp", cached_tokens=4))

llama.cpp adds to its counters when a request completes; ``counters_lag_ms`` makes the fake add
them that long after the response has ended, as a server that counts a moment late would.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent.parent / "data" / "real_servers"
PREFIX = {"llama.cpp": "llama-server", "vllm": "vllm"}
VERSION = {"vllm": "0.32.0", "llama.cpp": "b0-unknown"}
"""What each recorded server says its version is (vLLM ``/version``, llama.cpp ``/props``)."""
LLAMA_501 = {
    "error": {
        "code": 501,
        "message": "This server does not support metrics endpoint. Start it with `--metrics`",
        "type": "not_supported_error",
    }
}


def recorded(name: str) -> str:
    """One recorded file's text (``llama-server-metrics-after.txt``)."""
    return (DATA / name).read_text(encoding="utf-8")


def recorded_headers(kind: str) -> dict[str, str]:
    """The response headers of the real server's streamed answer, as curl printed them, less
    those the fake sets itself (content type, framing, date)."""
    out: dict[str, str] = {}
    for line in recorded(f"{PREFIX[kind]}-stream-headers.txt").splitlines():
        if not line.startswith("< ") or ":" not in line:
            continue
        name, value = line[2:].split(":", 1)
        if name.lower() in ("content-type", "transfer-encoding", "date", "content-length"):
            continue
        out[name] = value.strip()
    return out


@dataclass
class Persona:
    """Which real server the fake server plays, and how."""

    kind: str
    """``llama.cpp`` or ``vllm``."""
    metrics: bool = True
    """``False``: llama-server without ``--metrics`` (``/metrics`` answers 501)."""
    cached_tokens: int = 0
    """Prompt tokens of each request taken from the prefix cache."""
    counters_lag_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in PREFIX:
            raise ValueError(f"unknown persona {self.kind!r}; known: {', '.join(PREFIX)}")


@dataclass
class Counters:
    """What the fake has served, in the units the real servers count."""

    running: int = 0
    generated: int = 0
    prompt: int = 0
    """Prompt tokens, cached ones included."""
    cached: int = 0
    finished: int = 0
    ttft_s: float = 0.0
    tpot_s: float = 0.0
    e2e_s: float = 0.0
    gen_s: float = 0.0


@dataclass
class PersonaState:
    persona: Persona
    counters: Counters = field(default_factory=Counters)
    page: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    """Sent with every response, as the real server sends them."""

    def __post_init__(self) -> None:
        self.page = recorded(f"{PREFIX[self.persona.kind]}-metrics-after.txt")
        self.headers = recorded_headers(self.persona.kind)

    async def completed(
        self, generated: int, prompt: int, ttft_s: float, itl_s: float, e2e_s: float
    ) -> None:
        """A request ended: count it (after ``counters_lag_ms``, when set)."""
        if self.persona.counters_lag_ms:
            await asyncio.sleep(self.persona.counters_lag_ms / 1000)
        c = self.counters
        cached = min(self.persona.cached_tokens, max(prompt - 1, 0))
        c.generated += generated
        c.prompt += prompt
        c.cached += cached
        c.finished += 1
        c.ttft_s += ttft_s
        c.tpot_s += itl_s
        c.e2e_s += e2e_s
        c.gen_s += itl_s * generated

    def metrics_page(self) -> str:
        """The recorded page with the counters moved by what the fake served."""
        c = self.counters
        if self.persona.kind == "llama.cpp":
            add = {
                "llamacpp:prompt_tokens_total": c.prompt - c.cached,
                "llamacpp:prompt_tokens_cached_total": c.cached,
                "llamacpp:tokens_predicted_total": c.generated,
                "llamacpp:tokens_predicted_seconds_total": c.gen_s,
            }
            put = {"llamacpp:requests_processing": c.running}
        else:
            labels = '{engine="0",model_name="smollm2"}'
            add = {
                f"vllm:prompt_tokens_total{labels}": c.prompt,
                f"vllm:prompt_tokens_cached_total{labels}": c.cached,
                f"vllm:prefix_cache_hits_total{labels}": c.cached,
                f"vllm:prefix_cache_queries_total{labels}": c.prompt,
                f"vllm:generation_tokens_total{labels}": c.generated,
                'vllm:request_success_total{engine="0",finished_reason="length",'
                'model_name="smollm2"}': c.finished,
            }
            for name, total in (
                ("time_to_first_token_seconds", c.ttft_s),
                ("request_time_per_output_token_seconds", c.tpot_s),
                ("e2e_request_latency_seconds", c.e2e_s),
            ):
                add[f"vllm:{name}_count{labels}"] = c.finished
                add[f"vllm:{name}_sum{labels}"] = total
            put = {f"vllm:num_requests_running{labels}": c.running}
        lines = []
        for line in self.page.splitlines():
            if not line.startswith("#") and " " in line:
                key, value = line.rsplit(" ", 1)
                if key in add:
                    line = f"{key} {float(value) + add[key]!r}"
                elif key in put:
                    line = f"{key} {float(put[key])!r}"
            lines.append(line)
        return "\n".join(lines) + "\n"

    def version_document(self, path: str) -> dict[str, Any] | None:
        """The answer to ``/version`` (vLLM) or ``/props`` (llama.cpp); ``None``: no such route."""
        kind = self.persona.kind
        if kind == "vllm" and path == "/version":
            return {"version": VERSION["vllm"]}
        if kind == "llama.cpp" and path == "/props":
            return {"build_info": VERSION["llama.cpp"], "total_slots": 8, "n_ctx": 8192}
        return None


def stream_body(kind: str) -> str:
    """The real server's streamed answer to one chat completion (its SSE body, byte for byte)."""
    return recorded(f"{PREFIX[kind]}-stream-body.txt")


def stream_usage(kind: str) -> dict[str, Any]:
    """The ``usage`` object of the recorded stream."""
    for m in re.finditer(r"^data: (\{.*\})$", stream_body(kind), re.M):
        obj = json.loads(m.group(1))
        if obj.get("usage"):
            return dict(obj["usage"])
    raise ValueError(f"no usage in the recorded {kind} stream")
