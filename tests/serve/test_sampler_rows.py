"""Per-row sampling: plain greedy rows take the batch's argmax; the others go through the engine's
sampler with their own seed, whatever else shares the batch."""

from __future__ import annotations

import torch

from llmtop.engine.jobs import SamplingParams
from llmtop.engine.sampler_rows import row_sampler, sample_rows

LOGITS = torch.tensor(
    [[0.0, 5.0, 1.0, 4.0, 2.0], [3.0, 0.0, 0.0, 0.0, 2.9], [1.0, 1.0, 1.0, 1.0, 9.0]]
)
NO_HISTORY = [(), (), ()]


def test_greedy_rows_take_the_argmax_without_a_sampler():
    samplers = [row_sampler(SamplingParams(temperature=0))] * 3
    assert samplers == [None] * 3
    assert sample_rows(LOGITS, samplers, NO_HISTORY) == [1, 0, 4]


def test_top_k_one_is_greedy_even_when_hot():
    for seed in range(10):
        samplers = [row_sampler(SamplingParams(temperature=5.0, top_k=1, seed=seed))] * 3
        assert sample_rows(LOGITS, samplers, NO_HISTORY) == [1, 0, 4]


def test_top_k_never_draws_outside_the_k_best():
    s = row_sampler(SamplingParams(temperature=10.0, top_k=2, seed=0))
    assert {sample_rows(LOGITS[:1], [s], [()])[0] for _ in range(300)} == {1, 3}


def test_repetition_penalty_steers_a_greedy_row_away_from_its_history():
    s = row_sampler(SamplingParams(temperature=0, repetition_penalty=10.0))
    assert s is not None  # a penalty needs the sampler, not the plain argmax
    assert sample_rows(LOGITS[:1], [s], [[1]]) == [3]


def test_the_same_seed_draws_the_same_tokens_whatever_the_other_rows_do():
    p = SamplingParams(temperature=2.0, seed=5)
    s = row_sampler(p)
    alone = [sample_rows(LOGITS[:1], [s], [()])[0] for _ in range(50)]
    s, other = row_sampler(p), row_sampler(SamplingParams(temperature=2.0))
    mixed = [sample_rows(LOGITS[:2], [s, other], [(), ()])[0] for _ in range(50)]
    assert mixed == alone
    assert len(set(alone)) > 1  # it really samples
