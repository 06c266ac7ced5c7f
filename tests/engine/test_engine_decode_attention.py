"""The engine's decode attention kernel (engine/decode_attention.py, native_attention.c) against
attention computed in float64 over the same float16 cache, on caches of different lengths in
scattered slots."""

from __future__ import annotations

import pytest
import torch

from llmtop.engine.decode_attention import cache_dtype, decode_attention, usable

pytestmark = pytest.mark.usefixtures("kernels")
GEN = torch.Generator().manual_seed(0)


def setup(slots: int, hkv: int, d: int, max_len: int, pos: list[int], slot: list[int], h: int):
    k = torch.randn(slots, hkv, max_len, d, generator=GEN).half()
    v = torch.randn(slots, hkv, max_len, d, generator=GEN).half()
    qk = torch.randn(len(pos), h + hkv, d, generator=GEN)
    vn = torch.randn(len(pos), hkv, d, generator=GEN)
    return qk, vn, (k, v), torch.tensor(slot), torch.tensor(pos)


def reference(qk, vn, kv, slot, pos, h) -> torch.Tensor:
    """float64 softmax attention of each row over its own positions 0..pos, the new key and
    value rounded to float16 as the cache stores them."""
    k_cache, v_cache = (c.double().clone() for c in kv)
    hkv, d = k_cache.shape[1], k_cache.shape[3]
    outs = []
    for r in range(len(pos)):
        s, p = int(slot[r]), int(pos[r])
        k_cache[s, :, p] = qk[r, h:].half().double()
        v_cache[s, :, p] = vn[r].half().double()
        q = qk[r, :h].double().view(hkv, h // hkv, d)
        keys, values = k_cache[s, :, : p + 1], v_cache[s, :, : p + 1]  # [hkv, L, d]
        w = torch.softmax(q @ keys.transpose(1, 2) / d**0.5, dim=-1)
        outs.append((w @ values).reshape(h * d))
    return torch.stack(outs)


@pytest.mark.parametrize("d,h,hkv", [(64, 9, 3), (16, 4, 2), (128, 8, 8)])
def test_matches_float64_attention_and_writes_the_cache(d, h, hkv):
    pos, slot = [0, 5, 130, 17, 16, 31], [3, 0, 5, 1, 4, 2]  # one row sees a single key
    qk, vn, kv, slot_t, pos_t = setup(6, hkv, d, 160, pos, slot, h)
    want = reference(qk, vn, kv, slot_t, pos_t, h)
    got = decode_attention(qk, vn, kv, slot_t, pos_t, h)
    torch.testing.assert_close(got.double(), want, atol=2e-6, rtol=1e-5)
    for r, (s, p) in enumerate(zip(slot, pos, strict=True)):
        assert torch.equal(kv[0][s, :, p], qk[r, h:].half())
        assert torch.equal(kv[1][s, :, p], vn[r].half())


def test_a_rows_output_does_not_depend_on_its_batch():
    pos, slot = [40, 3, 99, 7], [2, 0, 3, 1]
    qk, vn, kv, slot_t, pos_t = setup(4, 3, 64, 128, pos, slot, 9)
    together = decode_attention(qk, vn, kv, slot_t, pos_t, 9)
    for r in range(4):
        alone = decode_attention(
            qk[r : r + 1], vn[r : r + 1], kv, slot_t[r : r + 1], pos_t[r : r + 1], 9
        )
        assert torch.equal(alone[0], together[r])


def test_large_scores_do_not_overflow():
    """Softmax subtracts each row's max first: scores in the thousands give weights, not NaN."""
    qk, vn, kv, slot_t, pos_t = setup(1, 1, 16, 8, [7], [0], 2)
    qk *= 300.0
    got = decode_attention(qk, vn, kv, slot_t, pos_t, 2)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(
        got.double(), reference(qk, vn, kv, slot_t, pos_t, 2), atol=1e-5, rtol=1e-5
    )


def test_a_position_outside_the_cache_is_refused_not_written():
    qk, vn, kv, _, _ = setup(2, 2, 16, 8, [0], [0], 4)
    for slot, pos in ([0], [8]), ([2], [0]), ([0], [-1]):
        before = kv[0].clone()
        with pytest.raises(ValueError, match="bad slot/position"):
            decode_attention(qk, vn, kv, torch.tensor(slot), torch.tensor(pos), 4)
        assert torch.equal(kv[0], before)


def test_usable_only_for_float16_cpu_caches_with_whole_vectors():
    half = torch.float16
    assert usable(torch.zeros(1, 1, 4, 64, dtype=half), 64)
    assert not usable(torch.zeros(1, 1, 4, 64), 64)  # float32: torch's attention
    assert not usable(torch.zeros(1, 1, 4, 64, dtype=torch.bfloat16), 64)
    assert not usable(torch.zeros(1, 1, 4, 24, dtype=half), 24)
    assert not usable(torch.zeros(2, 4, 3, 64, dtype=half).transpose(1, 2), 64)


def test_a_float32_cache_is_refused_not_misread():
    qk, vn, kv, slot_t, pos_t = setup(1, 1, 16, 8, [3], [0], 2)
    with pytest.raises(TypeError, match="float16"):
        decode_attention(qk, vn, tuple(c.float() for c in kv), slot_t, pos_t, 2)


def test_the_cache_is_float16_where_the_kernel_runs_float32_for_the_reference():
    cpu = torch.device("cpu")
    assert cache_dtype(cpu, torch.bfloat16, 64) == torch.float16
    assert cache_dtype(cpu, torch.float32, 64) == torch.float32  # the exact reference
    assert cache_dtype(cpu, torch.bfloat16, 24) == torch.float32  # no kernel for d = 24
