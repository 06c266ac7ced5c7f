"""Constants shared by the batching tests (in process and over HTTP)."""

from __future__ import annotations

from dataclasses import dataclass

TOL = 1.0
"""Largest |logit difference| allowed between a batched and a solo decode step. The engine
computes in bfloat16, whose spacing is 0.125 for logits of 16 to 32; 1.0 is 8 such steps."""

QUESTIONS = [
    "What is AI?",
    "Write a haiku about the sea.",
    "Explain KV caching in one sentence, please, for a beginner who knows Python.",
    "List three prime numbers.",
    "Who wrote Hamlet?",
    "Translate 'good morning' to French.",
    "Describe a sunset over the mountains in vivid detail.",
    "Why is the sky blue?",
]
"""Eight prompts of different lengths, so the batch holds caches of different lengths."""


@dataclass(frozen=True, slots=True)
class Tok:
    """One generated token as a run reported it."""

    token: object
    logprob: float
    margin: float
    """Its top-1 minus top-2 log-probability: how close the greedy choice was."""


def part_where(solo: list[Tok], batched: list[Tok]) -> int | None:
    """Where a batched greedy run parts from the same request run alone (``None``: nowhere).

    Asserts the rules: up to that token the two agree within ``TOL``, and at it the solo run's
    two best tokens were a near-tie (within ``2 * TOL``), so only rounding can explain it.
    """
    split = next(
        (k for k, (a, b) in enumerate(zip(solo, batched, strict=False)) if a.token != b.token),
        None,
    )
    if split is None:
        assert len(solo) == len(batched), (len(solo), len(batched))
    for a, b in zip(solo[:split], batched[:split], strict=True):
        assert abs(a.logprob - b.logprob) <= TOL, (a, b)
    if split is not None:
        assert solo[split].margin <= 2 * TOL, (split, solo[split], batched[split])
    return split
