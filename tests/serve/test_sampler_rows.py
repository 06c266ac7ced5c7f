"""Per-row sampling: plain greedy rows take the batch's argmax; the others are filtered and drawn
together, each with its own seed, whatever else shares the batch, from the same distribution as
the engine's one-row sampler (engine/sampling.py). Every test runs on both paths: the C sampler
(native_sample.c, where the kernels build) and the tensor one (machines without them)."""

from __future__ import annotations

import pytest
import torch

from llmtop.engine import native, sampling
from llmtop.engine.jobs import SamplingParams
from llmtop.engine.sampler_rows import CANDIDATES, row_sampler, sample_rows

LOGITS = torch.tensor(
    [[0.0, 5.0, 1.0, 4.0, 2.0], [3.0, 0.0, 0.0, 0.0, 2.9], [1.0, 1.0, 1.0, 1.0, 9.0]]
)
NO_HISTORY = [(), (), ()]


@pytest.fixture(autouse=True, params=["native", "tensors"])
def path(request, monkeypatch):
    if request.param == "native" and native.library() is None:
        pytest.skip("the engine's C kernels do not build here")
    if request.param == "tensors":
        monkeypatch.setattr(native, "library", lambda: None)
    return request.param


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


@pytest.mark.parametrize("top_k", [0, 3], ids=["wide", "small-k"])
def test_the_same_seed_draws_the_same_tokens_whatever_the_other_rows_do(top_k):
    """Rows with a small top-k are drawn one by one, the others together: neither path may let
    another row (of either kind) change a seeded row's draws."""
    p = SamplingParams(temperature=2.0, top_k=top_k, seed=5)
    s = row_sampler(p)
    alone = [sample_rows(LOGITS[:1], [s], [()])[0] for _ in range(50)]
    s = row_sampler(p)
    others = [
        row_sampler(SamplingParams(temperature=2.0)),
        row_sampler(SamplingParams(temperature=1.0, top_k=2)),
    ]
    mixed = [sample_rows(LOGITS, [s, *others], [(), (), ()])[0] for _ in range(50)]
    assert mixed == alone
    assert len(set(alone)) > 1  # it really samples


def frequencies(draw, n: int, vocab: int) -> torch.Tensor:
    return torch.bincount(torch.tensor([draw() for _ in range(n)]), minlength=vocab) / n


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.7),
        SamplingParams(temperature=1.3, top_k=6),
        SamplingParams(temperature=1.0, top_p=0.8),
        SamplingParams(temperature=0.8, top_k=12, top_p=0.9),
    ],
    ids=["temperature", "top_k", "top_p", "top_k_top_p"],
)
def test_batched_draws_follow_the_one_row_samplers_distribution(params):
    """Same filters, same distribution: total variation under 0.05 over 3000 seeded draws
    (the two samplers use their random numbers differently, so the draws themselves differ)."""
    logits = torch.randn(1, 40, generator=torch.Generator().manual_seed(0)) * 2
    rows = [row_sampler(SamplingParams(**{**_fields(params), "seed": 1})) for _ in range(4)]
    batched = frequencies(lambda: sample_rows(logits.expand(4, -1), rows, [()] * 4)[2], 3000, 40)
    one = sampling.Sampler(rows[0].params.__class__(**{**_fields(rows[0].params), "seed": 2}))
    reference = frequencies(lambda: one(logits[0]), 3000, 40)
    assert float((batched - reference).abs().sum() / 2) < 0.05
    if params.top_k:
        assert set(batched.nonzero()[:, 0].tolist()) <= set(
            logits[0].topk(params.top_k)[1].tolist()
        )


def test_a_nucleus_wider_than_the_candidates_is_drawn_from_whole():
    """A flat row's top-p nucleus holds most of the vocabulary, far more than ``CANDIDATES``."""
    vocab = 4 * CANDIDATES
    logits = torch.zeros(1, vocab)
    s = row_sampler(SamplingParams(temperature=1.0, top_p=0.9, seed=3))
    best = set(logits[0].topk(CANDIDATES)[1].tolist())
    drawn = [sample_rows(logits, [s], [()])[0] for _ in range(200)]
    outside = sum(t not in best for t in drawn) / len(drawn)
    assert 0.6 < outside < 0.9  # ~ (0.9 - 0.25) / 0.9 of the nucleus lies past the candidates


def _fields(p) -> dict:
    return {f: getattr(p, f) for f in p.__dataclass_fields__}


@pytest.mark.parametrize("top_k", [0, 50, 1000], ids=["top_p", "small-k", "wide-k"])
def test_a_model_sized_row_follows_the_filters_distribution(top_k):
    """A vocabulary of 49k with a long tail, as the bundled model's: the C sampler's candidates
    (weights past 2^-12 of the best, then 2^-24, then all) must not cut the tail short. Against
    the exact probabilities of engine/sampling.py's filters, the tail counted as one token."""
    logits = torch.randn(1, 49152, generator=torch.Generator().manual_seed(1)) * 2
    logits[0, :20] += 7  # a head of likely tokens over a tail of 30-66 % of the kept mass
    s = row_sampler(SamplingParams(temperature=0.8, top_k=top_k, top_p=0.95, seed=4))
    assert s is not None
    drawn = torch.tensor([sample_rows(logits, [s], [()])[0] for _ in range(2000)])
    exact = torch.softmax(sampling.filter_top_k_top_p(logits[0] / 0.8, top_k, 0.95), dim=-1)
    seen = torch.bincount(torch.clamp(drawn, max=20), minlength=21) / len(drawn)
    expected = torch.cat([exact[:20], exact[20:].sum()[None]])
    assert float(expected[20]) > 0.25  # the tail matters here
    assert float((seen - expected).abs().sum() / 2) < 0.05
