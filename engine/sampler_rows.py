"""Sampling for a batch whose rows each have their own parameters and generator.

Plain greedy rows take one batched argmax; every other row goes through the engine's sampler
(engine/sampling.py) with its own seeded generator, so a seeded request draws the same numbers
whatever else shares its batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llmtop.engine import sampling
from llmtop.engine.jobs import SamplingParams


def row_sampler(p: SamplingParams) -> sampling.Sampler | None:
    """The engine's per-request sampler, or ``None`` for plain greedy (batched argmax)."""
    if p.greedy:
        return None
    return sampling.Sampler(
        sampling.SamplingParams(
            temperature=max(p.temperature, 0.0),
            top_k=p.top_k,
            top_p=p.top_p,
            repetition_penalty=p.repetition_penalty,
            seed=p.seed,
        )
    )


def sample_rows(
    logits: torch.Tensor,
    samplers: Sequence[sampling.Sampler | None],
    histories: Sequence[Sequence[int]],
) -> list[int]:
    """One token id per row of ``logits`` ``[B, V]``; ``histories`` feed repetition penalties."""
    assert logits.dim() == 2 and logits.shape[0] == len(samplers) == len(histories)
    out = logits.argmax(dim=-1).tolist()  # greedy for every row first: one op for the batch
    for i, sampler in enumerate(samplers):
        if sampler is not None:
            out[i] = sampler(logits[i], histories[i])
    return out
