"""Prefill then decode one sequence, streaming each token with its timestamp, as Ollama reports it.

``generate`` returns a ``Generation``: iterate it for ``TokenEvent``s (or pass ``on_token``), then
read ``.stats``. Timings follow Ollama's fields, in ns from ``time.perf_counter_ns``:
- load_ns: request setup before the prompt is evaluated (template, tokenizing, KV cache), plus
  ``model_load_ns`` when the caller loaded the model for this request;
- prefill_ns (prompt_eval_duration): the forward passes over the prompt;
- decode_ns (eval_duration): from the end of prefill to the last token, i.e. sampling the first
  token and every decode step after it; output_tokens (eval_count) counts the streamed tokens.

A stop token ends the sequence unseen; a stop string ends it with the text cut before the string.
Text that could be the start of a stop string is held back until it cannot be; it is released
with a later token or, at the end, in ``stats.tail``. ``cancel`` (a threading.Event) is checked
before every forward pass. The model runs under ``torch.inference_mode``.

``prefill`` and ``decode_one`` are the single-sequence steps; batched steps call
``Transformer.forward`` with several rows (see kv_cache.CacheSlots).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from llmtop.engine.errors import RequestError
from llmtop.engine.kv_cache import CacheSlots, SequenceCache
from llmtop.engine.loader import LoadedModel
from llmtop.engine.model import Transformer
from llmtop.engine.sampling import Sampler, SamplingParams
from llmtop.engine.stop_text import StopText

DoneReason = Literal["stop", "length", "cancelled"]
PREFILL_CHUNK = 512  # prompt tokens per forward pass; bounds attention memory on long prompts
CACHE_ROUND = 256  # a fresh cache is sized to the request, rounded up to this many positions


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """One generated token as it is made."""

    index: int  # 0-based place in the output
    token_id: int
    text: str  # text released with this token; "" while a character or a stop string is pending
    t_ns: int  # perf_counter_ns when the token was chosen


@dataclass(frozen=True, slots=True)
class GenerationStats:
    """What one request did and how long each part took (durations in ns)."""

    prompt_tokens: int
    output_tokens: int
    load_ns: int
    prefill_ns: int
    decode_ns: int
    total_ns: int
    done_reason: DoneReason
    text: str  # the whole output, stop string cut off
    tail: str  # the end of ``text`` that no TokenEvent carried
    token_ids: tuple[int, ...] = field(repr=False)

    def ollama(self) -> dict[str, int]:
        """The same numbers under Ollama's final-chunk names."""
        return {
            "load_duration": self.load_ns,
            "prompt_eval_count": self.prompt_tokens,
            "prompt_eval_duration": self.prefill_ns,
            "eval_count": self.output_tokens,
            "eval_duration": self.decode_ns,
            "total_duration": self.total_ns,
        }


def prefill(
    model: Transformer, seq: SequenceCache, ids: Sequence[int], chunk: int = PREFILL_CHUNK
) -> Tensor:
    """Run the prompt through the model into ``seq``'s cache; logits of its last token, [vocab]."""
    seq.reserve(len(ids))
    dev = model.device
    slot = torch.tensor([seq.slot], device=dev)
    logits: Tensor | None = None
    for start in range(0, len(ids), chunk):
        part = ids[start : start + chunk]
        n = len(part)
        tokens = torch.tensor([part], dtype=torch.long, device=dev)
        pos = torch.arange(seq.length, seq.length + n, device=dev).unsqueeze(0)
        slots = CacheSlots(slot, (seq.slot, seq.slot + 1), seq.length + n)
        last = torch.tensor([n - 1], device=dev)
        logits = model(tokens, pos, seq.cache, slots, last=last, prompt=True)
        seq.length += n
    assert logits is not None, "empty prompt"
    return logits[0]


def decode_one(model: Transformer, seq: SequenceCache, token: int) -> Tensor:
    """Append one token to ``seq`` and return the next-token logits, [vocab]."""
    seq.reserve(1)
    dev = model.device
    tokens = torch.tensor([[token]], dtype=torch.long, device=dev)
    pos = torch.tensor([[seq.length]], dtype=torch.long, device=dev)
    slots = CacheSlots(
        torch.tensor([seq.slot], device=dev), (seq.slot, seq.slot + 1), seq.length + 1
    )
    logits: Tensor = model(tokens, pos, seq.cache, slots)
    seq.length += 1
    return logits[0, -1]


class Generation:
    """A running request: iterate for TokenEvents; ``stats`` is set once it has finished."""

    def __init__(
        self,
        lm: LoadedModel,
        prompt_ids: list[int],
        *,
        max_tokens: int,
        sampling: SamplingParams,
        stop: Sequence[str],
        stop_token_ids: Iterable[int],
        cancel: threading.Event | None,
        on_token: Callable[[TokenEvent], None] | None,
        seq: SequenceCache | None,
        t_start_ns: int,
        model_load_ns: int,
    ) -> None:
        ctx = lm.config.context_length
        if not prompt_ids:
            raise RequestError("the prompt is empty")
        if len(prompt_ids) >= ctx:
            raise RequestError(
                f"the prompt has {len(prompt_ids)} tokens; the model's context holds {ctx}"
            )
        if max_tokens < 1:
            raise RequestError(f"max_tokens must be >= 1, got {max_tokens}")
        self.lm, self.prompt_ids = lm, prompt_ids
        self.max_tokens = min(max_tokens, ctx - len(prompt_ids))
        self.stop = [s for s in stop if s]
        self.stop_ids = frozenset(stop_token_ids)
        self.cancel, self.on_token = cancel, on_token
        self.sampler = Sampler(sampling, lm.device)
        need = len(prompt_ids) + self.max_tokens
        if seq is None:
            size = min(ctx, -(-need // CACHE_ROUND) * CACHE_ROUND)
            seq = lm.model.new_cache(size).acquire()
        elif seq.room - len(prompt_ids) < 1:
            raise RequestError(
                f"the prompt has {len(prompt_ids)} tokens; its KV-cache slot has room for {seq.room}"
            )
        self.max_tokens = min(self.max_tokens, seq.room - len(prompt_ids))
        self.seq = seq
        self.t_start_ns, self.model_load_ns = t_start_ns, model_load_ns
        self.stats: GenerationStats | None = None
        self._events = self._run()

    def __iter__(self) -> Iterator[TokenEvent]:
        return self._events

    def __next__(self) -> TokenEvent:
        return next(self._events)

    def run(self) -> GenerationStats:
        """Consume the whole stream (``on_token`` still sees every token); return the stats."""
        for _ in self._events:
            pass
        assert self.stats is not None
        return self.stats

    def _cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    @torch.inference_mode()
    def _run(self) -> Iterator[TokenEvent]:
        model, tok = self.lm.model, self.lm.tokenizer
        stream, stops = tok.stream(skip_special=True), StopText(tuple(self.stop))
        sent = ""  # the text the TokenEvents carried
        out: list[int] = []
        reason: DoneReason = "length"
        t_prefill = t_prefill_end = t_last = time.perf_counter_ns()
        if self._cancelled():
            reason = "cancelled"
        else:
            logits = prefill(model, self.seq, self.prompt_ids)
            t_last = t_prefill_end = time.perf_counter_ns()
            while True:
                token = self.sampler(logits, self.prompt_ids + out if self._penalty else ())
                t_last = time.perf_counter_ns()
                if token in self.stop_ids:
                    reason = "stop"
                    break
                out.append(token)
                piece = stops.push(stream.step(token))
                last = stops.stopped or len(out) == self.max_tokens
                if last:
                    reason = "stop" if stops.stopped else "length"
                    piece += stops.flush()  # nothing more can complete a stop string
                sent += piece
                event = TokenEvent(len(out) - 1, token, piece, t_last)
                if self.on_token is not None:
                    self.on_token(event)
                yield event
                if last:
                    break
                if self._cancelled():
                    reason = "cancelled"
                    break
                logits = decode_one(model, self.seq, token)
        text = sent + stops.flush()  # text held back when a stop token or a cancel came
        if not stops.stopped:  # bytes of an unfinished character the stream still holds
            full = tok.decode(out, skip_special=True)
            if len(full) > len(text) and full.startswith(text):
                text = full
        self.stats = GenerationStats(
            prompt_tokens=len(self.prompt_ids),
            output_tokens=len(out),
            load_ns=t_prefill - self.t_start_ns + self.model_load_ns,
            prefill_ns=t_prefill_end - t_prefill,
            decode_ns=t_last - t_prefill_end,
            total_ns=time.perf_counter_ns() - self.t_start_ns + self.model_load_ns,
            done_reason=reason,
            text=text,
            tail=text[len(sent) :],
            token_ids=tuple(out),
        )

    @property
    def _penalty(self) -> bool:
        return self.sampler.params.repetition_penalty != 1.0


def generate(
    lm: LoadedModel,
    prompt: str | Sequence[int] | None = None,
    *,
    messages: Sequence[Mapping[str, Any]] | None = None,
    max_tokens: int = 128,
    sampling: SamplingParams | None = None,
    stop: Sequence[str] = (),
    stop_token_ids: Iterable[int] | None = None,
    ignore_eos: bool = False,
    cancel: threading.Event | None = None,
    on_token: Callable[[TokenEvent], None] | None = None,
    seq: SequenceCache | None = None,
    model_load_ns: int = 0,
) -> Generation:
    """Start generating from a raw prompt (text or token ids) or chat ``messages``.

    Args:
        prompt: raw text (tokenized as is) or token ids; give this or ``messages``.
        messages: a chat, rendered with the model's chat template and a generation prompt.
        max_tokens: most tokens to generate (also cut to what the context has room for).
        sampling: SamplingParams; default greedy.
        stop: strings that end the output (not included in it).
        stop_token_ids: ids that end it; default the model's EOS/EOT; ``ignore_eos`` clears them.
        cancel: set it from any thread to stop before the next forward pass.
        on_token: called with every TokenEvent, in the generating thread.
        seq: a KV-cache slot to use; default a fresh cache sized to the request.
        model_load_ns: model load time to report in ``load_ns`` when this request caused it.

    Raises:
        RequestError: empty or too long a prompt, bad parameters, no chat template.
    """
    t0 = time.perf_counter_ns()
    tok = lm.tokenizer
    if (prompt is None) == (messages is None):
        raise RequestError("give either a prompt or chat messages")
    if messages is not None:
        ids = tok.encode(tok.apply_chat_template(messages), add_bos=False)
    elif isinstance(prompt, str):
        ids = tok.encode(prompt)
    else:
        assert prompt is not None  # one of the two: checked above
        ids = [int(i) for i in prompt]
        if any(not 0 <= i < lm.config.vocab_size for i in ids):
            raise RequestError(f"token ids must lie in 0..{lm.config.vocab_size - 1}")
    stops = () if ignore_eos else (tok.stop_ids if stop_token_ids is None else stop_token_ids)
    return Generation(
        lm,
        ids,
        max_tokens=max_tokens,
        sampling=sampling or SamplingParams(),
        stop=stop,
        stop_token_ids=stops,
        cancel=cancel,
        on_token=on_token,
        seq=seq,
        t_start_ns=t0,
        model_load_ns=model_load_ns,
    )
