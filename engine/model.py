"""Llama, from a config: RMSNorm, RoPE, grouped-query attention, SwiGLU, tied embeddings.

One forward serves prefill, decode and batches of both: every row carries its own positions and
its own KV-cache slot, so sequences of different lengths run in one step (``CacheSlots``). The
projections are whatever modules the loader hands in (4-bit, Q8_0 or dense; see quant.py), fused
as q|k|v and gate|up so a layer costs few calls: decode at batch 1 is bound by per-call overhead.

Precision: the residual stream and the norms stay float32; matmul inputs are the compute dtype
(bf16 by default, which the quantized kernels need); attention and the KV cache are float32 on
CPU, where torch's bf16 attention with grouped heads is 3-10x slower.

Q and K keep the GGUF layout, in which llama.cpp's converter has permuted each head's rows so
that RoPE rotates adjacent pairs (x0, x1), (x2, x3), ... instead of the two halves; ``apply_rope``
rotates adjacent pairs, which gives the same attention as Hugging Face's layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmtop.engine.errors import ModelLoadError
from llmtop.engine.kv_cache import CacheSlots, KVCache


@dataclass(frozen=True, slots=True)
class LlamaConfig:
    """The shape of a llama model (gguf.py maps the GGUF keys onto it)."""

    n_layers: int
    dim: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    vocab_size: int
    rope_theta: float
    rms_eps: float
    context_length: int
    tied_embeddings: bool

    def __post_init__(self) -> None:
        if self.n_heads % self.n_kv_heads:
            raise ModelLoadError(
                f"{self.n_heads} attention heads do not split into {self.n_kv_heads} kv-head groups"
            )

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim


def rope_table(head_dim: int, max_len: int, theta: float) -> Tensor:
    """e^(i * pos * theta^(-2j/head_dim)) for every position: complex64 [max_len, head_dim/2]."""
    inv_freq = theta ** -(torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64)


def apply_rope(x: Tensor, rot: Tensor) -> Tensor:
    """Rotate adjacent pairs of x [B, T, H, D] by rot [B, T, 1, D/2] (complex); float32 out."""
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # [B, T, H, D/2]
    return torch.view_as_real(xc * rot).flatten(-2)


def attention_mask(pos: Tensor, kv_len: int) -> Tensor | None:
    """Key j is visible to the token at position p iff j <= p: bool [B, 1, T, kv_len].

    None for one row decoding the token right after its cache (kv_len = p + 1): it sees every
    cached position, and SDPA without a mask is the fast path.
    """
    if pos.shape == (1, 1) and int(pos) + 1 == kv_len:
        return None
    keys = torch.arange(kv_len, device=pos.device)
    return (keys <= pos.unsqueeze(-1)).unsqueeze(1)


class Attention(nn.Module):
    """Grouped-query attention over the KV cache, with fused q|k|v projection."""

    def __init__(self, cfg: LlamaConfig, wqkv: nn.Module, wo: nn.Module) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wqkv, self.wo = wqkv, wo  # [dim -> q_dim + 2 kv_dim], [q_dim -> dim]

    def forward(
        self,
        x: Tensor,
        rot: Tensor,
        mask: Tensor | None,
        kv: tuple[Tensor, Tensor],
        slots: CacheSlots,
        pos: Tensor,
    ) -> Tensor:
        b, t, _ = x.shape
        h, hkv, d = self.n_heads, self.n_kv_heads, self.head_dim
        k_cache, v_cache = kv  # [S, hkv, max_len, d]
        qkv = self.wqkv(x)  # [B, T, (h + 2 hkv) d]
        qk = apply_rope(qkv[..., : (h + hkv) * d].view(b, t, h + hkv, d), rot)  # q and k at once
        qk = qk.to(k_cache.dtype)
        q, k = qk.split([h, hkv], dim=2)  # [B, T, h, d], [B, T, hkv, d]
        v = qkv[..., (h + hkv) * d :].view(b, t, hkv, d)
        slots.write(k_cache, pos, k)
        slots.write(v_cache, pos, v.to(v_cache.dtype))
        keys, values = slots.read(k_cache), slots.read(v_cache)  # [B, hkv, kv_len, d]
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2), keys, values, attn_mask=mask, enable_gqa=True
        )  # [B, h, T, d]
        return self.wo(o.transpose(1, 2).reshape(b, t, h * d).to(x.dtype))  # x: matmul dtype


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(x w1) * x w3), with w1|w3 fused into one projection."""

    def __init__(self, w13: nn.Module, w2: nn.Module) -> None:
        super().__init__()
        self.w13, self.w2 = w13, w2  # [dim -> 2 ffn], [ffn -> dim]

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + feed_forward(norm(x))."""

    def __init__(
        self,
        cfg: LlamaConfig,
        attention: Attention,
        feed_forward: FeedForward,
        attention_norm: Tensor,
        ffn_norm: Tensor,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.attention, self.feed_forward = attention, feed_forward
        self.attention_norm = nn.Parameter(attention_norm, requires_grad=False)  # [dim]
        self.ffn_norm = nn.Parameter(ffn_norm, requires_grad=False)  # [dim]
        self.norm_shape, self.eps = (cfg.dim,), cfg.rms_eps
        self.dtype = dtype

    def forward(
        self,
        x: Tensor,
        rot: Tensor,
        mask: Tensor | None,
        kv: tuple[Tensor, Tensor],
        slots: CacheSlots,
        pos: Tensor,
    ) -> Tensor:
        h = F.rms_norm(x, self.norm_shape, self.attention_norm, self.eps).to(self.dtype)
        x = x + self.attention(h, rot, mask, kv, slots, pos)
        h = F.rms_norm(x, self.norm_shape, self.ffn_norm, self.eps).to(self.dtype)
        return x + self.feed_forward(h)


class Transformer(nn.Module):
    """The whole model: embeddings, blocks, final norm, LM head (tied or not)."""

    def __init__(
        self,
        cfg: LlamaConfig,
        tok_embeddings: nn.Module,
        layers: list[Block],
        norm: Tensor,
        output: nn.Module,
        dtype: torch.dtype,
        kv_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        assert len(layers) == cfg.n_layers
        self.cfg, self.dtype = cfg, dtype
        self.kv_dtype = kv_dtype or (torch.float32 if norm.device.type == "cpu" else dtype)
        self.tok_embeddings = tok_embeddings
        self.layers = nn.ModuleList(layers)
        self.norm = nn.Parameter(norm, requires_grad=False)  # [dim]
        self.output = output  # [dim -> vocab]
        rot = rope_table(cfg.head_dim, cfg.context_length, cfg.rope_theta)
        self.register_buffer("rope", rot.to(norm.device), persistent=False)  # [ctx, d/2]

    @property
    def device(self) -> torch.device:
        return self.norm.device

    def new_cache(
        self, max_len: int, n_slots: int = 1, dtype: torch.dtype | None = None
    ) -> KVCache:
        """A KV cache for ``n_slots`` sequences of up to ``max_len`` tokens on this model's device."""
        c = self.cfg
        if max_len > c.context_length:
            max_len = c.context_length
        return KVCache(
            c.n_layers,
            c.n_kv_heads,
            c.head_dim,
            max_len,
            n_slots,
            dtype or self.kv_dtype,
            self.device,
        )

    def forward(
        self,
        tokens: Tensor,
        pos: Tensor,
        cache: KVCache,
        slots: CacheSlots,
        last: Tensor | None = None,
    ) -> Tensor:
        """Run a batch of rows through the model, reading and writing their cache slots.

        Args:
            tokens: [B, T] token ids (rows shorter than T are padded at the end).
            pos: [B, T] the position of each token in its own sequence; padding positions must
                still lie inside the slot (they are overwritten before any real token sees them).
            cache: the KV cache; slots: which rows of it, and kv_len (the longest row after this step).
            last: [B] index along T of the token whose logits each row wants; None for all tokens.

        Returns:
            float32 logits, [B, vocab] with ``last``, else [B, T, vocab].
        """
        assert tokens.shape == pos.shape and tokens.dim() == 2, (tokens.shape, pos.shape)
        x = self.tok_embeddings(tokens).float()  # [B, T, dim], the residual stream stays float32
        rot = self.rope[pos].unsqueeze(2)  # [B, T, 1, d/2]
        mask = attention_mask(pos, slots.kv_len)
        for i, layer in enumerate(self.layers):
            x = layer(x, rot, mask, cache.layer(i), slots, pos)
        if last is not None:
            x = x[torch.arange(x.shape[0], device=x.device), last]  # [B, dim]
        x = F.rms_norm(x, (self.cfg.dim,), self.norm, self.cfg.rms_eps).to(self.dtype)
        return self.output(x).float()
