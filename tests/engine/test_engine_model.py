"""The forward pass: KV-cache decode equals full recompute; a batched step over sequences of
different lengths equals running each alone; the cache knows its bytes and its slots.

Tolerances: float32 (dense weights) agrees to 1e-4 on logits. The default bf16 path rounds
activations to 8 significant bits, and a batch of 3 rows takes a different kernel path than one
row, so the two ways differ by a few bf16 ulps: on the tiny model (logits ~±3) within 0.15; on
SmolLM2 (logits up to ~30, where one ulp is 0.125) within 0.5 at most and 0.06 on average, with
identical next tokens. (A batch of single-token rows attends with model.decode_attention, a lone
row with torch's flash kernel, whose approximate exp rounds differently: measured 0.41 at most
and 0.053 on average here; with the flash kernel for both, 0.50 and 0.031.)
"""

from __future__ import annotations

import pytest
import torch

from llmtop.engine import native
from llmtop.engine.errors import RequestError
from llmtop.engine.generate import decode_one, prefill
from llmtop.engine.kv_cache import CacheSlots, KVCache
from llmtop.engine.loader import LoadedModel

TOL32 = 1e-4
TOL16 = 0.15
REAL_MAX, REAL_MEAN = 0.5, 0.06


def full_logits(lm: LoadedModel, ids: list[int]) -> torch.Tensor:
    """Every position's logits from one forward over the whole sequence, fresh cache: [T, V]."""
    m, n = lm.model, len(ids)
    cache = m.new_cache(n)
    with torch.inference_mode():
        out = m(torch.tensor([ids]), torch.arange(n)[None], cache, CacheSlots.of([0], n))
    return out[0]


def cached_logits(lm: LoadedModel, ids: list[int], n_prompt: int) -> torch.Tensor:
    """Prefill ``n_prompt`` tokens, then feed the rest one at a time through the KV cache."""
    seq = lm.model.new_cache(len(ids)).acquire()
    with torch.inference_mode():
        rows = [prefill(lm.model, seq, ids[:n_prompt])]
        rows += [decode_one(lm.model, seq, t) for t in ids[n_prompt:]]
    return torch.stack(rows)  # [T - n_prompt + 1, V]


@pytest.mark.parametrize("which, tol", [("tiny32", TOL32), ("tiny", TOL16)])
def test_kv_cache_decode_matches_full_recompute(request, which, tol):
    lm = request.getfixturevalue(which)
    ids = lm.tokenizer.encode("the cat sat on the mat, hello world what is AI")
    full = full_logits(lm, ids)
    cached = cached_logits(lm, ids, n_prompt=4)
    assert cached.shape == (len(ids) - 3, lm.config.vocab_size)
    torch.testing.assert_close(cached, full[3:], atol=tol, rtol=0)
    if which == "tiny32":  # the random tiny model's logits are too flat for bf16 choices
        assert torch.equal(cached.argmax(-1), full[3:].argmax(-1))


def test_chunked_prefill_matches_one_pass(tiny32):
    ids = tiny32.tokenizer.encode("the cat sat on the mat " * 6)
    seq = tiny32.model.new_cache(len(ids)).acquire()
    with torch.inference_mode():
        chunked = prefill(tiny32.model, seq, ids, chunk=7)
    assert seq.length == len(ids)
    torch.testing.assert_close(chunked, full_logits(tiny32, ids)[-1], atol=TOL32, rtol=0)


def batched_vs_alone(lm: LoadedModel, prompts: list[str], steps: int, slots: list[int]):
    """Prefill each prompt into its own slot of one shared cache, then decode them together
    greedily for ``steps`` batched steps; separately decode each alone in its own cache.
    Returns (batched logits [steps, B, V], alone logits [steps, B, V])."""
    m = lm.model
    ids = [lm.tokenizer.encode(p) for p in prompts]
    n_slots = max(slots) + 1
    cache = m.new_cache(64, n_slots=n_slots)
    claimed = {s.slot: s for s in (cache.acquire() for _ in range(n_slots))}
    seqs = [claimed[i] for i in slots]  # batch row b uses slot slots[b]
    with torch.inference_mode():
        nxt = [int(prefill(m, s, p).argmax()) for s, p in zip(seqs, ids, strict=True)]
        batched = []
        for _ in range(steps):
            pos = torch.tensor([[s.length] for s in seqs])
            view = CacheSlots.of(slots, max(s.length for s in seqs) + 1)
            logits = m(torch.tensor([[t] for t in nxt]), pos, cache, view)[:, 0]  # [B, V]
            for s in seqs:
                s.length += 1
            batched.append(logits)
            nxt = logits.argmax(-1).tolist()
        alone = []
        for p in ids:
            seq = m.new_cache(64).acquire()
            tok, rows = int(prefill(m, seq, p).argmax()), []
            for _ in range(steps):
                rows.append(decode_one(m, seq, tok))
                tok = int(rows[-1].argmax())
            alone.append(torch.stack(rows))
    return torch.stack(batched), torch.stack(alone, dim=1)


@pytest.mark.parametrize("slots", [[0, 1, 2], [3, 0, 2]], ids=["consecutive", "scattered"])
def test_batched_decode_of_different_lengths_matches_alone_tiny(tiny32, slots):
    prompts = ["hello", "the cat sat on the mat", "what is AI? the world is"]
    batched, alone = batched_vs_alone(tiny32, prompts, steps=5, slots=slots)
    torch.testing.assert_close(batched, alone, atol=TOL32, rtol=0)


@pytest.mark.slow
def test_batched_decode_of_different_lengths_matches_alone_smollm(smollm):
    prompts = ["Hi", "The capital of France is", "Write a short poem about the sea and the sky:"]
    batched, alone = batched_vs_alone(smollm, prompts, steps=6, slots=[0, 1, 2])
    if native.library() is not None:  # the engine's kernels: the same bits alone or batched
        assert torch.equal(batched, alone)
    assert torch.equal(batched.argmax(-1), alone.argmax(-1))
    diff = (batched - alone).abs()
    assert diff.max() <= REAL_MAX and diff.mean() <= REAL_MEAN, (diff.max(), diff.mean())


def test_padded_batched_prefill_matches_alone(tiny32):
    """Rows of different prompt lengths padded into one [B, T] prefill; ``last`` picks each
    row's final real token."""
    m = tiny32.model
    ids = [tiny32.tokenizer.encode(p) for p in ["hello world", "the cat sat on the mat", "AI"]]
    t = max(map(len, ids))
    cache = m.new_cache(t + 4, n_slots=3)
    tokens = torch.tensor([p + [0] * (t - len(p)) for p in ids])
    pos = torch.arange(t).expand(3, t)
    last = torch.tensor([len(p) - 1 for p in ids])
    with torch.inference_mode():
        batched = m(tokens, pos, cache, CacheSlots.of([0, 1, 2], t), last=last)
    alone = torch.stack([full_logits(tiny32, p)[-1] for p in ids])
    torch.testing.assert_close(batched, alone, atol=TOL32, rtol=0)


def test_logits_shapes(tiny):
    m, v = tiny.model, tiny.config.vocab_size
    cache = m.new_cache(16, n_slots=2)
    with torch.inference_mode():
        all_pos = m(
            torch.zeros(2, 5, dtype=torch.long),
            torch.arange(5).expand(2, 5),
            cache,
            CacheSlots.of([0, 1], 5),
        )
        last = m(
            torch.zeros(2, 5, dtype=torch.long),
            torch.arange(5).expand(2, 5),
            cache,
            CacheSlots.of([0, 1], 5),
            last=torch.tensor([4, 2]),
        )
    assert all_pos.shape == (2, 5, v) and all_pos.dtype == torch.float32
    assert last.shape == (2, v)
    assert torch.isfinite(all_pos).all()


def test_kv_cache_bytes_and_slots():
    cache = KVCache(
        n_layers=30, n_kv_heads=3, head_dim=64, max_len=1024, n_slots=4, dtype=torch.bfloat16
    )
    assert cache.bytes_per_sequence == 2 * 30 * 3 * 1024 * 64 * 2
    assert cache.nbytes == 4 * cache.bytes_per_sequence
    seqs = [cache.acquire() for _ in range(4)]
    assert sorted(s.slot for s in seqs) == [0, 1, 2, 3] and cache.free_slots == 0
    assert seqs[0].nbytes == cache.bytes_per_sequence
    seqs[0].length = 256
    assert seqs[0].used_bytes == cache.bytes_per_sequence // 4
    with pytest.raises(RequestError, match="slots are in use"):
        cache.acquire()
    cache.release(seqs[2])
    again = cache.acquire()
    assert again.slot == seqs[2].slot and again.length == 0


def test_sequence_longer_than_its_slot_is_refused(tiny):
    seq = tiny.model.new_cache(8).acquire()
    with pytest.raises(RequestError, match="does not fit the KV cache"):
        prefill(tiny.model, seq, list(range(9)))


def test_unused_cache_is_zero_and_stays_clean(tiny):
    """Masked positions multiply stale values by zero weights; uninitialised NaNs would leak."""
    cache = tiny.model.new_cache(32, n_slots=2)
    assert not cache.k.any() and not cache.v.any()
