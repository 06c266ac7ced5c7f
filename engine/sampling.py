"""Pick the next token from logits: greedy, temperature, top-k, top-p, repetition penalty, seeded.

Randomness comes from a per-request ``torch.Generator`` (never global state), so the same seed and
prompt give the same text. The order of the filters is llama.cpp's and transformers': penalty,
then temperature, then top-k, then top-p.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from llmtop.engine.errors import RequestError


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to choose tokens. temperature 0 is greedy (argmax); top_k 0 and top_p 1 are off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise RequestError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise RequestError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise RequestError(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.repetition_penalty > 0:
            raise RequestError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class Sampler:
    """Stateful per request: owns the seeded generator."""

    def __init__(self, params: SamplingParams, device: torch.device | str = "cpu") -> None:
        self.params = params
        self.generator = torch.Generator(device=device)
        seed = params.seed if params.seed is not None else random.SystemRandom().getrandbits(63)
        self.generator.manual_seed(seed)

    def __call__(self, logits: Tensor, history: Sequence[int] = ()) -> int:
        """One token id from float32 logits [vocab]; ``history`` feeds the repetition penalty."""
        return sample(logits, self.params, self.generator, history)


def apply_repetition_penalty(logits: Tensor, history: Sequence[int], penalty: float) -> Tensor:
    """CTRL-style: a seen token's logit is divided by ``penalty`` if positive, else multiplied."""
    if penalty == 1.0 or not history:
        return logits
    ids = torch.tensor(sorted(set(history)), dtype=torch.long, device=logits.device)
    seen = logits[ids]
    logits = logits.clone()
    logits[ids] = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits


def filter_top_k_top_p(logits: Tensor, top_k: int, top_p: float) -> Tensor:
    """Logits with everything outside the top-k and the top-p nucleus set to -inf."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens before it already cover top_p; the first always stays
        drop = (torch.cumsum(probs, dim=-1) - probs) >= top_p
        logits = logits.clone()
        logits[order[drop]] = float("-inf")
    return logits


def sample(
    logits: Tensor, params: SamplingParams, generator: torch.Generator, history: Sequence[int] = ()
) -> int:
    """One token id from logits [vocab] under ``params``."""
    logits = apply_repetition_penalty(logits, history, params.repetition_penalty)
    if params.greedy:
        return int(torch.argmax(logits))
    logits = filter_top_k_top_p(logits / params.temperature, params.top_k, params.top_p)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
