"""Sampling: greedy, temperature, top-k, top-p, repetition penalty, seeded generators."""

from __future__ import annotations

import math

import pytest
import torch

from llmtop.engine.sampling import (
    Sampler,
    SamplingParams,
    apply_repetition_penalty,
    filter_top_k_top_p,
)


def logits_of(probs: list[float]) -> torch.Tensor:
    return torch.tensor([math.log(p) for p in probs])


def draws(params: SamplingParams, logits: torch.Tensor, n: int, history=()) -> list[int]:
    sampler = Sampler(params)
    return [sampler(logits, history) for _ in range(n)]


def test_greedy_is_argmax_whatever_the_seed():
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    assert set(draws(SamplingParams(), logits, 20)) == {1}
    assert set(draws(SamplingParams(temperature=0.0, seed=5), logits, 5)) == {1}


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([2.0, 1.5, -1.0, 0.5])
    out = apply_repetition_penalty(logits, [0, 2, 0], 2.0)
    assert out.tolist() == [1.0, 1.5, -2.0, 0.5]
    assert logits.tolist() == [2.0, 1.5, -1.0, 0.5]  # input untouched
    assert draws(SamplingParams(repetition_penalty=1.5), logits, 1, history=[0]) == [1]


def test_top_k_keeps_only_the_k_best():
    logits = logits_of([0.3, 0.25, 0.2, 0.15, 0.1])
    picked = draws(SamplingParams(temperature=1.0, top_k=3, seed=1), logits, 400)
    assert set(picked) == {0, 1, 2}
    assert set(draws(SamplingParams(temperature=5.0, top_k=1, seed=2), logits, 50)) == {0}


@pytest.mark.parametrize(
    "top_p, kept", [(0.5, {0}), (0.7, {0, 1}), (0.9, {0, 1, 2}), (1.0, {0, 1, 2, 3})]
)
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, kept):
    logits = logits_of([0.5, 0.3, 0.15, 0.05])
    filtered = filter_top_k_top_p(logits, 0, top_p)
    assert {i for i, v in enumerate(filtered.tolist()) if v != float("-inf")} == kept
    picked = draws(SamplingParams(temperature=1.0, top_p=top_p, seed=3), logits, 600)
    assert set(picked) == kept


def test_temperature_one_samples_the_distribution():
    picked = draws(SamplingParams(temperature=1.0, seed=11), logits_of([0.75, 0.25]), 4000)
    assert picked.count(0) / 4000 == pytest.approx(0.75, abs=0.03)


def test_high_temperature_flattens_low_sharpens():
    logits = logits_of([0.75, 0.25])
    hot = draws(SamplingParams(temperature=20.0, seed=4), logits, 3000).count(0) / 3000
    cold = draws(SamplingParams(temperature=0.25, seed=4), logits, 3000).count(0) / 3000
    assert hot < 0.6 and cold > 0.95


def test_seeds_repeat_and_differ():
    logits = torch.zeros(1000)
    a = draws(SamplingParams(temperature=1.0, seed=42), logits, 30)
    assert a == draws(SamplingParams(temperature=1.0, seed=42), logits, 30)
    assert a != draws(SamplingParams(temperature=1.0, seed=43), logits, 30)


def test_no_seed_is_random_per_request():
    logits = torch.zeros(1000)
    assert draws(SamplingParams(temperature=1.0), logits, 30) != draws(
        SamplingParams(temperature=1.0), logits, 30
    )
