"""Attention for decode rows (one new token per sequence) with the engine's kernel
(native_attention.c), which also writes the token's key and value into the cache.

Why: torch has no CPU attention for a batch of single-token queries over caches of different
lengths. The batched path (model.grouped_attention) pads every row to the longest and masks,
in ~8 small ops per layer; at a batch of 8 that was ~1.2 ms of a ~12 ms step, and a lone row
took torch's SDPA, whose summation order differs from the batched path's, so a sequence's
logits moved in the last bits when others joined its batch. The kernel reads each row's own
positions only, in one fixed order: a row's output is the same bits alone or batched, and
padding costs nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor

from llmtop.engine import native


def usable(k_cache: Tensor, head_dim: int) -> bool:
    """Whether this layer's cache [S, hkv, max_len, d] can take the kernel."""
    return (
        k_cache.device.type == "cpu"
        and k_cache.dtype == torch.float32
        and k_cache.is_contiguous()
        and head_dim % 16 == 0
        and head_dim <= 256
        and native.library() is not None
    )


def decode_attention(
    q_and_k: Tensor, v: Tensor, kv: tuple[Tensor, Tensor], slot: Tensor, pos: Tensor, h: int
) -> Tensor:
    """Write each row's key and value at (slot, pos), then attend over positions 0..pos.

    Args:
        q_and_k: float32 [B, h + hkv, d], rope applied; v: [B, hkv, d] (any float dtype).
        kv: this layer's (keys, values) caches, float32 [S, hkv, max_len, d].
        slot, pos: int64 [B].

    Returns:
        float32 [B, h * d].
    """
    k_cache, v_cache = kv
    s, hkv, max_len, d = k_cache.shape
    b = q_and_k.shape[0]
    assert q_and_k.shape == (b, h + hkv, d) and v.shape == (b, hkv, d), (q_and_k.shape, v.shape)
    qk = q_and_k.contiguous()
    v32 = v.to(torch.float32).contiguous()
    slot, pos = slot.contiguous(), pos.contiguous()
    assert slot.dtype == pos.dtype == torch.int64 and v_cache.is_contiguous()
    out = torch.empty(b, h * d, dtype=torch.float32)
    lib = native.library()
    assert lib is not None
    rc = lib.llmtop_decode_attention(
        qk.data_ptr(), v32.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
        slot.data_ptr(), pos.data_ptr(), b, s, h, hkv, d, max_len, d**-0.5, out.data_ptr(),
    )  # fmt: skip
    if rc != 0:
        raise ValueError(f"decode attention: bad slot/position or out of memory ({b} rows)")
    return out
