"""The one served model as the HTTP handlers see it: its card (name, file, details), its text
codec (tokenizer and chat template), context checks, and job submission to the scheduler.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from llmtop.engine.admission import Admission, AdmittedHandle
from llmtop.engine.api_common import ApiError
from llmtop.engine.errors import RequestError
from llmtop.engine.jobs import Job, JobHandle, Piece, SamplingParams
from llmtop.engine.serve_options import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_QUEUE


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """What one client may ask of the server (``llmtop serve --max-body-bytes --max-queue``)."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    """A larger request body is refused with 413 before it is read."""
    max_queue: int = DEFAULT_MAX_QUEUE
    """Jobs waiting for a batch slot; one more is refused with 503 and ``Retry-After``."""


class TextCodec(Protocol):
    """Text to token ids and back, and the model's chat template."""

    vocab_size: int

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]: ...

    def chat_prompt(self, messages: list[dict[str, str]]) -> str: ...

    def token_text(self, token_id: int) -> str: ...


class JobSink(Protocol):
    """Where jobs go (the scheduler)."""

    def submit(self, handle: JobHandle) -> None: ...


@dataclass(frozen=True, slots=True)
class ModelCard:
    """What /api/tags, /api/ps, /api/show and /v1/models say about the model."""

    name: str
    """``smollm2`` for the bundled model, else the file name without ``.gguf``."""
    path: Path
    file_size: int
    mtime_s: float
    architecture: str
    parameter_count: int
    quantization: str
    """e.g. ``Q4_1`` (from ``general.file_type``)."""
    context_length: int
    """Tokens per sequence in the engine's KV cache (prompt and output together)."""
    weights_bytes: int
    """The weights as held in memory by the engine."""
    device: str = "cpu"
    chat_template: str | None = None
    model_info: dict[str, Any] = field(default_factory=dict)

    @property
    def modified_at(self) -> str:
        return datetime.fromtimestamp(self.mtime_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    @property
    def created_s(self) -> float:
        return self.mtime_s

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.architecture,
            "families": [self.architecture],
            "parameter_size": parameter_size(self.parameter_count),
            "quantization_level": self.quantization,
        }


def parameter_size(n: int) -> str:
    """Ollama's way of writing a parameter count: ``134.52M``, ``8.0B``."""
    if n >= 1_000_000_000:
        return f"{n / 1e9:.1f}B"
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    return f"{n / 1e3:.0f}K"


class ModelService:
    """The model behind both APIs: checks a request against it and submits the job."""

    def __init__(
        self,
        card: ModelCard,
        codec: TextCodec,
        sink: JobSink,
        kv_capacity_bytes: int = 0,
        *,
        max_batch: int = 8,
        limits: RequestLimits | None = None,
    ) -> None:
        self.card = card
        self.codec = codec
        self.sink = sink
        self.kv_capacity_bytes = kv_capacity_bytes
        self.limits = limits or RequestLimits()
        self.admission = Admission(max_batch, self.limits.max_queue)
        self._digest: str | None = None
        self._names = {card.name, f"{card.name}:latest"}

    @property
    def vocab_size(self) -> int:
        return self.codec.vocab_size

    def matches(self, model: str) -> bool:
        """The names a client may use: ``smollm2`` and ``smollm2:latest``."""
        return model in self._names

    def encode(self, text: str) -> list[int]:
        """A raw prompt's token ids (with BOS where the model wants one)."""
        return self.codec.encode(text)

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """A chat's token ids, through the model's template (which writes its own BOS)."""
        return self.codec.encode(self.chat_prompt(messages), add_bos=False)

    def logprob_entry(self, piece: Piece) -> dict[str, Any]:
        """A token's logprob entry as both APIs write it: token, logprob, bytes, top_logprobs."""

        def entry(token_id: int, logprob: float) -> dict[str, Any]:
            text = self.codec.token_text(token_id)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

        assert piece.logprob is not None
        top = [entry(t, lp) for t, lp in piece.top]
        return entry(piece.token_id, piece.logprob) | {"top_logprobs": top}

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        try:
            return self.codec.chat_prompt(messages)
        except RequestError as e:  # no template, or it refused the conversation
            raise ApiError(400, str(e), param="messages") from None

    def memory_bytes(self) -> int:
        """What /api/ps reports as the model's size: weights plus the preallocated KV cache."""
        return self.card.weights_bytes + self.kv_capacity_bytes

    async def digest(self) -> str:
        """sha256 of the model file, as Ollama's digests are; computed once, off the loop."""
        if self._digest is None:
            self._digest = await asyncio.to_thread(_sha256, self.card.path)
        return self._digest

    def check_fits(self, prompt_tokens: int) -> None:
        """Refuse a prompt the context cannot hold (400): it must leave room for one token.

        A ``max_tokens`` / ``num_predict`` beyond what is left is not an error, in either API:
        the output stops when the context is full, with finish/done reason ``length`` (as
        Ollama and llama.cpp do; vLLM would refuse it with 400). Both APIs behave the same, so
        a benchmark gets the same answer whichever API it drives.
        """
        ctx = self.card.context_length
        if prompt_tokens == 0:
            raise ApiError(400, "the prompt is empty", param="prompt")
        if prompt_tokens >= ctx:
            raise ApiError(
                400,
                f"the prompt is {prompt_tokens} tokens, longer than the context of {ctx} tokens "
                f"of model '{self.card.name}'",
                param="messages",
                code="context_length_exceeded",
            )

    def submit(self, prompt_ids: list[int], params: SamplingParams, arrival_ns: int) -> JobHandle:
        """Check the request against the context, admit it (or 503) and queue it; call on the
        event loop.

        ``arrival_ns`` (perf_counter_ns when the request came in) starts the job's clock, so
        Ollama's ``total_duration`` includes reading and tokenizing the request.
        """
        self.check_fits(len(prompt_ids))
        self.admission.admit()
        job = Job(prompt_ids, params, arrival_ns)
        handle = AdmittedHandle(job, asyncio.get_running_loop(), self.admission)
        self.sink.submit(handle)
        return handle


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
