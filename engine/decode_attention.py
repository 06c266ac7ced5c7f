"""Attention for decode rows (one new token per sequence) with the engine's kernel
(native_attention.c), which also writes the token's key and value into the cache.

Why: torch has no CPU attention for a batch of single-token queries over caches of different
lengths. The batched path (model.grouped_attention) pads every row to the longest and masks,
in ~8 small ops per layer; at a batch of 8 that was ~1.2 ms of a ~12 ms step, and a lone row
took torch's SDPA, whose summation order differs from the batched path's, so a sequence's
logits moved in the last bits when others joined its batch. The kernel reads each row's own
positions only, in one fixed order: a row's output is the same bits alone or batched, and
padding costs nothing.

The KV cache is float16 where the kernel runs (``cache_dtype``; float32 elsewhere on CPU), as
llama.cpp's default cache is: half the memory, so twice the context or the sequences in the same
RAM (8 sequences x 4096 tokens of an 8B llama: 4.3 GB instead of 8.6). Attention itself stays
float32. Measured on the reference prompts: max logit error 0.293 against 0.284 with a float32
cache (bound 0.6). Speed: the same here (a batch of 8 rows is not bound by reading the cache).
"""

from __future__ import annotations

import torch
from torch import Tensor

from llmtop.engine import native


def supported(head_dim: int) -> bool:
    """Whether the kernel is built and handles this head size."""
    return head_dim % 16 == 0 and head_dim <= 256 and native.library() is not None


def cache_dtype(device: torch.device, dtype: torch.dtype, head_dim: int) -> torch.dtype:
    """The KV cache's dtype on CPU for a model computing in ``dtype``: float16 for the kernel,
    float32 without it or for the float32 reference (which stays exact)."""
    assert device.type == "cpu", device
    return torch.float16 if dtype == torch.bfloat16 and supported(head_dim) else torch.float32


def usable(k_cache: Tensor, head_dim: int) -> bool:
    """Whether this layer's cache [S, hkv, max_len, d] can take the kernel (float16)."""
    return (
        k_cache.device.type == "cpu"
        and k_cache.dtype == torch.float16
        and k_cache.is_contiguous()
        and supported(head_dim)
    )


def decode_attention(
    q_and_k: Tensor, v: Tensor, kv: tuple[Tensor, Tensor], slot: Tensor, pos: Tensor, h: int
) -> Tensor:
    """Write each row's key and value at (slot, pos), then attend over positions 0..pos.

    Args:
        q_and_k: float32 [B, h + hkv, d], rope applied; v: [B, hkv, d] (any float dtype).
        kv: this layer's (keys, values) caches, float16 [S, hkv, max_len, d]; the new key and
            value are rounded to float16 as ``Tensor.to(torch.float16)`` rounds.
        slot, pos: int64 [B].

    Returns:
        float32 [B, h * d].
    """
    k_cache, v_cache = kv
    s, hkv, max_len, d = k_cache.shape
    b = q_and_k.shape[0]
    assert q_and_k.shape == (b, h + hkv, d) and v.shape == (b, hkv, d), (q_and_k.shape, v.shape)
    qk = q_and_k.to(torch.float32).contiguous()
    v32 = v.to(torch.float32).contiguous()
    slot, pos = slot.contiguous(), pos.contiguous()
    assert slot.dtype == pos.dtype == torch.int64 and v_cache.is_contiguous()
    if not (k_cache.dtype == v_cache.dtype == torch.float16 and k_cache.is_contiguous()):
        raise TypeError(f"decode attention needs contiguous float16 caches, not {k_cache.dtype}")
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
