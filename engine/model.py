"""Llama, from a config: RMSNorm, RoPE, grouped-query attention, SwiGLU, tied embeddings.

One forward serves prefill, decode and batches of both: every row carries its own positions and
its own KV-cache slot, so sequences of different lengths run in one step (``CacheSlots``). The
projections are whatever modules the loader hands in (4-bit, Q8_0 or dense; see quant.py), fused
as q|k|v and gate|up so a layer costs few calls: decode at batch 1 is bound by per-call overhead.

Precision: the residual stream and the norms stay float32; matmul inputs are the compute dtype
(bf16 by default, which the quantized kernels need); attention runs in float32 on CPU, where
torch's bf16 attention with grouped heads is 3-10x slower, over a KV cache stored in float16 where
the engine's decode attention kernel runs (half the memory; see decode_attention.py) and float32
elsewhere.

Where the engine's C kernels run the whole model (4/8-bit blocks, bf16, CPU), the loader attaches
``Transformer.native`` (native_forward.py) and both forwards hand it their rows: a decode step
is then one C call over every layer. The torch code below stays the reference, and runs every
other model (float32 mode, CUDA, other weights).

Decode rows (one new token per sequence) take the engine's C attention (decode_attention.py)
where it is built; with it and the block matmul (block_matmul.py), a sequence's logits are the
same bits alone or in any batch. Prompt chunks, and every row without those kernels, take
``grouped_attention`` (SDPA for a lone decode row).

Q and K keep the GGUF layout, in which llama.cpp's converter has permuted each head's rows so
that RoPE rotates adjacent pairs (x0, x1), (x2, x3), ... instead of the two halves; ``apply_rope``
rotates adjacent pairs, which gives the same attention as Hugging Face's layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmtop.engine.decode_attention import cache_dtype, decode_attention
from llmtop.engine.decode_attention import usable as decode_attention_usable
from llmtop.engine.errors import ModelLoadError
from llmtop.engine.kv_cache import CacheSlots, KVCache, RaggedStep, Segment


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
    xc = torch.view_as_complex(torch.unflatten(x.float(), -1, (-1, 2)))  # [B, T, H, D/2]
    return torch.view_as_real(xc * rot).flatten(-2)


def attention_mask(
    pos: Tensor,
    kv_len: int,
    heads: tuple[int, int],
    prompt: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Tensor | None:
    """Key j is visible to the token at position p iff j <= p: an additive bias of 0 (visible)
    and -inf, laid out as ``grouped_attention`` adds it: [B * hkv, g * T, kv_len] for ``heads``
    = (hkv kv heads, g query heads per kv head), in the attention's ``dtype`` (see
    ``attention_dtype``). Built once per forward, shared by every layer.

    None for one row decoding the token right after its cache (kv_len = p + 1): it sees every
    cached position, and torch's SDPA without a mask is the fast path for that case. Not for
    ``prompt`` tokens: they all take ``grouped_attention`` (see there), down to a chunk of one
    token, which is what a prompt found in the prefix cache leaves to compute.
    """
    if not prompt and pos.shape == (1, 1) and int(pos) + 1 == kv_len:
        return None
    b, t = pos.shape
    hkv, g = heads
    hidden = torch.arange(kv_len, device=pos.device) > pos.unsqueeze(-1)  # [B, T, kv_len]
    bias = torch.zeros(hidden.shape, dtype=dtype, device=pos.device).masked_fill_(
        hidden, -torch.inf
    )
    return bias[:, None, None].expand(b, hkv, g, t, kv_len).reshape(b * hkv, g * t, kv_len)


def attention_dtype(k_cache: Tensor) -> torch.dtype:
    """What attention computes in: float32 on CPU whatever the cache stores, the cache's dtype
    on GPU."""
    return torch.float32 if k_cache.device.type == "cpu" else k_cache.dtype


QUERY_BLOCK = 128
"""Query rows per block in ``grouped_attention``: a 512-token prompt in one block prefilled ~12%
slower than with torch's flash kernel (scores of [heads, 512, 512] floats per layer, half of them
masked); in blocks of 128, each reading only the keys it can see, within ~3% (64: the same,
32: slower)."""


def grouped_attention(q: Tensor, keys: Tensor, values: Tensor, bias: Tensor) -> Tensor:
    """Attention with the query heads grouped over their shared kv head: [B, h, T, d].

    q [B, h, T, d]; keys, values [B, hkv, L, d]; bias [B * hkv, g * T, L] (0 or -inf; see
    ``attention_mask``). One batched matmul with the scale and the bias folded in, an
    exponential, a second matmul, normalised after it as torch's flash kernel does.

    Why not SDPA: (1) speed: the CPU flash kernel with a mask and grouped heads took ~370 us per
    layer for a batch of 8 decode rows (it expands the grouped keys and splits into blocks sized
    for long queries) against ~45 us here, a third of a batch-8 decode step. (2) exactness: a
    query row's result depends on its own row and the keys it reads, not on which other query
    rows share the call (the flash kernel blocks queries together). So a prompt chunk gives the
    same bits alone or inside a mixed decode step, and a repeated prompt whose first tokens come
    from the prefix cache gives the same first-token logits as its first run (with SDPA they
    moved by up to 0.19, enough to change a seeded sample). A batched decode row strays from the
    same row alone by float rounding only (within 0.7 of its logits; 1.7 with softmax before the
    second matmul). A different kv length (another chunking) can still move the last bits.
    Long chunks go in blocks of ``QUERY_BLOCK`` rows; a row's last block ends at the row itself
    or later, so the last prompt token still reads the whole prompt as it does alone.
    """
    b, h, t, d = q.shape
    hkv = keys.shape[1]
    if t > QUERY_BLOCK:  # a long prompt chunk: blocks of queries, each over the keys it sees
        g = h // hkv
        rows = bias.view(b * hkv, g, t, -1)
        outs = []
        for t0 in range(0, t, QUERY_BLOCK):
            blk = rows[:, :, t0 : t0 + QUERY_BLOCK]
            seen = int((blk == 0).flatten(0, 2).any(0).nonzero().max()) + 1
            outs.append(
                grouped_attention(
                    q[:, :, t0 : t0 + QUERY_BLOCK],
                    keys[:, :, :seen],
                    values[:, :, :seen],
                    blk[..., :seen].reshape(b * hkv, -1, seen),
                )
            )
        return torch.cat(outs, dim=2)
    group_rows = h // hkv * t  # query head i reads kv head i // (h / hkv), as SDPA's enable_gqa
    k = keys.reshape(b * hkv, -1, d).transpose(1, 2)  # a view when the slots are consecutive
    scores = torch.baddbmm(bias, q.reshape(b * hkv, group_rows, d), k, alpha=d**-0.5)
    weights = scores.sub_(scores.amax(dim=-1, keepdim=True)).exp_()  # [B hkv, g T, L]
    out = torch.bmm(weights, values.reshape(b * hkv, -1, d))
    return out.div_(weights.sum(dim=-1, keepdim=True)).view(b, h, t, d)


def attend(q: Tensor, keys: Tensor, values: Tensor, bias: Tensor | None) -> Tensor:
    """SDPA for a lone decode row (no mask: its fast path), ``grouped_attention`` otherwise
    (torch's path: used where the engine's decode attention kernel is not built)."""
    if bias is None:
        return F.scaled_dot_product_attention(q, keys, values, enable_gqa=True)
    return grouped_attention(q, keys, values, bias)


RaggedMasks = tuple[Tensor | None, list[Tensor | None]]
"""A ``RaggedStep``'s attention biases: the decode rows' (None when there are none), then each
prompt chunk's."""


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
        mask: Tensor | RaggedMasks | None,
        kv: tuple[Tensor, Tensor],
        slots: CacheSlots | RaggedStep,
        pos: Tensor,
    ) -> Tensor:
        """``mask``: ``attention_mask``'s bias (None: none needed), or for a ``RaggedStep`` the
        decode rows' and each chunk's."""
        b, t, _ = x.shape
        h, hkv, d = self.n_heads, self.n_kv_heads, self.head_dim
        k_cache, v_cache = kv  # [S, hkv, max_len, d]
        qkv = self.wqkv(x)  # [B, T, (h + 2 hkv) d]
        qk = apply_rope(qkv[..., : (h + hkv) * d].view(b, t, h + hkv, d), rot)  # q and k at once
        qk = qk.to(attention_dtype(k_cache))
        q, k = torch.split(qk, [h, hkv], dim=2)  # [B, T, h, d], [B, T, hkv, d]
        v = qkv[..., (h + hkv) * d :].view(b, t, hkv, d)
        if isinstance(slots, RaggedStep):
            assert isinstance(mask, tuple)
            o = self._ragged(qk[0], v[0], kv, slots, mask)[None]  # [1, N, h d]
        elif t == 1 and self.native_decode(k_cache):
            o = decode_attention(qk[:, 0], v[:, 0], kv, slots.index, pos[:, 0], h)
            o = o.view(b, 1, h * d)
        else:
            assert not isinstance(mask, tuple)
            slots.write(k_cache, pos, k.to(k_cache.dtype))
            slots.write(v_cache, pos, v.to(v_cache.dtype))
            keys, values = slots.read(k_cache), slots.read(v_cache)  # [B, hkv, kv_len, d]
            keys, values = keys.to(q.dtype), values.to(q.dtype)  # the new tokens' as rounded there
            o = attend(q.transpose(1, 2), keys, values, mask)  # [B, h, T, d]
            o = o.transpose(1, 2).reshape(b, t, h * d)
        out: Tensor = self.wo(o.to(x.dtype))  # x: matmul dtype
        return out

    def native_decode(self, k_cache: Tensor) -> bool:
        """Whether decode rows take the engine's kernel (decode_attention.py)."""
        return decode_attention_usable(k_cache, self.head_dim)

    def _ragged(
        self,
        qk: Tensor,
        v: Tensor,
        kv: tuple[Tensor, Tensor],
        step: RaggedStep,
        masks: RaggedMasks,
    ) -> Tensor:
        """Attention for a ``RaggedStep``: qk [N, h + hkv, d] (queries, then keys), v [N, hkv, d];
        out [N, h d].

        The decode rows attend together; each prefill chunk attends causally over its own slot.
        ``masks``: the decode rows' bias and each chunk's (see ``attention_mask``).
        """
        k_cache, v_cache = kv
        h, d = self.n_heads, self.head_dim
        q, k = torch.split(qk, [h, self.n_kv_heads], dim=1)
        nd = step.n_decode
        native = nd > 0 and self.native_decode(k_cache)
        first = nd if native else 0  # the kernel writes the decode rows' keys and values itself
        step.write(k_cache, k.to(k_cache.dtype), first)
        step.write(v_cache, v.to(v_cache.dtype), first)
        decode_bias, segment_bias = masks
        outs = []
        if native:
            assert step.decode is not None
            pos = step.pos[:nd]
            outs.append(decode_attention(qk[:nd], v[:nd], kv, step.decode.index, pos, h))
        elif nd:
            assert step.decode is not None
            keys, values = step.decode.read(k_cache), step.decode.read(v_cache)
            keys, values = keys.to(q.dtype), values.to(q.dtype)
            o = attend(q[:nd].unsqueeze(2), keys, values, decode_bias)  # [B, h, 1, d]
            outs.append(o.reshape(nd, h * d))
        for seg, bias in zip(step.segments, segment_bias, strict=True):
            assert bias is not None
            qs = q[seg.start : seg.start + seg.length].transpose(0, 1)[None]  # [1, h, n, d]
            keys = k_cache[seg.slot : seg.slot + 1, :, : seg.kv_len].to(q.dtype)
            values = v_cache[seg.slot : seg.slot + 1, :, : seg.kv_len].to(q.dtype)
            o = grouped_attention(qs, keys, values, bias)  # [1, h, n, d]
            outs.append(o[0].transpose(0, 1).reshape(seg.length, h * d))
        return outs[0] if len(outs) == 1 else torch.cat(outs)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(x w1) * x w3), with w1|w3 fused into one projection."""

    def __init__(self, w13: nn.Module, w2: nn.Module) -> None:
        super().__init__()
        self.w13, self.w2 = w13, w2  # [dim -> 2 ffn], [ffn -> dim]

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        out: Tensor = self.w2(F.silu(gate) * up)
        return out


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
        mask: Tensor | RaggedMasks | None,
        kv: tuple[Tensor, Tensor],
        slots: CacheSlots | RaggedStep,
        pos: Tensor,
    ) -> Tensor:
        h = F.rms_norm(x, self.norm_shape, self.attention_norm, self.eps).to(self.dtype)
        x = x + self.attention(h, rot, mask, kv, slots, pos)
        h = F.rms_norm(x, self.norm_shape, self.ffn_norm, self.eps).to(self.dtype)
        ffn: Tensor = self.feed_forward(h)
        return x + ffn


class NativePath(Protocol):
    """The same forwards on the engine's C kernels (native_forward.py), which the loader attaches
    as ``Transformer.native`` where they run the model."""

    def handles(self, cache: KVCache) -> bool: ...

    def decode(self, tokens: Tensor, slot: Tensor, pos: Tensor, cache: KVCache) -> Tensor:
        """One token per row ([B] each): logits [B, V]."""
        ...

    def rows(
        self,
        tokens: Tensor,
        slot: Tensor,
        pos: Tensor,
        n_decode: int,
        segments: Sequence[Segment],
        cache: KVCache,
        logits_at: Tensor | None,
    ) -> Tensor:
        """Decode rows, then prompt segments ([N] each): logits at ``logits_at`` (None: all)."""
        ...


class Transformer(nn.Module):
    """The whole model: embeddings, blocks, final norm, LM head (tied or not)."""

    rope: Tensor  # a buffer (register_buffer): declared so that its type is known
    native: NativePath | None = None
    """Set by the loader where the C kernels run this model; the forwards below then take it."""

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
        device = norm.device
        self.kv_dtype = kv_dtype or (
            cache_dtype(device, dtype, cfg.head_dim) if device.type == "cpu" else dtype
        )
        self.tok_embeddings = tok_embeddings
        self.layers = nn.ModuleList(layers)
        self.norm = nn.Parameter(norm, requires_grad=False)  # [dim]
        self.output = output  # [dim -> vocab]
        rot = rope_table(cfg.head_dim, cfg.context_length, cfg.rope_theta)
        self.register_buffer("rope", rot.to(norm.device), persistent=False)  # [ctx, d/2]

    @property
    def device(self) -> torch.device:
        return self.norm.device

    @property
    def heads(self) -> tuple[int, int]:
        """(kv heads, query heads per kv head): the layout of ``attention_mask``."""
        return self.cfg.n_kv_heads, self.cfg.n_heads // self.cfg.n_kv_heads

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
        prompt: bool = False,
    ) -> Tensor:
        """Run a batch of rows through the model, reading and writing their cache slots.

        Args:
            tokens: [B, T] token ids (rows shorter than T are padded at the end).
            pos: [B, T] the position of each token in its own sequence; padding positions must
                still lie inside the slot (they are overwritten before any real token sees them).
            cache: the KV cache; slots: which rows of it, and kv_len (the longest row after this step).
            last: [B] index along T of the token whose logits each row wants; None for all tokens.
            prompt: the tokens are prompt tokens (see ``attention_mask``): prefill passes True.

        Returns:
            float32 logits, [B, vocab] with ``last``, else [B, T, vocab].
        """
        assert tokens.shape == pos.shape and tokens.dim() == 2, (tokens.shape, pos.shape)
        if self.native is not None and self.native.handles(cache):
            return self._native_forward(tokens, pos, cache, slots, last, prompt, self.native)
        x = self.tok_embeddings(tokens).float()  # [B, T, dim], the residual stream stays float32
        rot = self.rope[pos].unsqueeze(2)  # [B, T, 1, d/2]
        mask = attention_mask(pos, slots.kv_len, self.heads, prompt, attention_dtype(cache.k))
        for i, layer in enumerate(self.layers):
            x = layer(x, rot, mask, cache.layer(i), slots, pos)
        if last is not None:
            x = x[torch.arange(x.shape[0], device=x.device), last]  # [B, dim]
        x = F.rms_norm(x, (self.cfg.dim,), self.norm, self.cfg.rms_eps).to(self.dtype)
        logits: Tensor = self.output(x)
        return logits.float()

    def forward_ragged(
        self, tokens: Tensor, cache: KVCache, step: RaggedStep, logits_at: Tensor
    ) -> Tensor:
        """Decode rows and prefill chunks in one forward (see kv_cache.RaggedStep).

        Args:
            tokens: [N] token ids, laid out as ``step`` says.
            logits_at: [R] indices of the tokens whose next-token logits are wanted.

        Returns:
            float32 logits [R, vocab].
        """
        assert tokens.shape == step.pos.shape == step.slot_of.shape and tokens.dim() == 1
        if self.native is not None and self.native.handles(cache):
            return self.native.rows(
                tokens, step.slot_of, step.pos, step.n_decode, step.segments, cache, logits_at
            )
        x = self.tok_embeddings(tokens[None]).float()  # [1, N, dim]
        rot = self.rope[step.pos[None]].unsqueeze(2)  # [1, N, 1, d/2]
        decode_bias, kv_dtype = None, attention_dtype(cache.k)
        if step.n_decode and step.decode is not None:
            decode_bias = attention_mask(
                step.pos[: step.n_decode, None], step.decode.kv_len, self.heads, False, kv_dtype
            )
        segment_bias = [
            attention_mask(step.pos[None, s.start : s.end], s.kv_len, self.heads, True, kv_dtype)
            for s in step.segments
        ]
        masks = (decode_bias, segment_bias)
        for i, layer in enumerate(self.layers):
            x = layer(x, rot, masks, cache.layer(i), step, step.pos)
        x = F.rms_norm(x[0, logits_at], (self.cfg.dim,), self.norm, self.cfg.rms_eps)
        logits: Tensor = self.output(x.to(self.dtype))
        return logits.float()

    def _native_forward(
        self,
        tokens: Tensor,
        pos: Tensor,
        cache: KVCache,
        slots: CacheSlots,
        last: Tensor | None,
        prompt: bool,
        native: NativePath,
    ) -> Tensor:
        """``forward`` on the C kernels: decode rows in one call; prompt rows (each row of
        ``tokens`` a chunk at consecutive positions) as segments."""
        b, t = tokens.shape
        if t == 1 and not prompt:
            logits = native.decode(tokens[:, 0], slots.index, pos[:, 0], cache)  # [B, V]
            return logits if last is not None else logits[:, None]
        first = pos[:, 0].tolist()
        assert torch.equal(pos, pos[:, :1] + torch.arange(t, device=pos.device)), "not in order"
        index = slots.index.tolist()
        segments = [Segment(i * t, t, index[i], first[i]) for i in range(b)]
        slot_of = slots.index.repeat_interleave(t)
        at = None if last is None else last + torch.arange(b, device=last.device) * t
        logits = native.rows(tokens.reshape(-1), slot_of, pos.reshape(-1), 0, segments, cache, at)
        return logits if last is not None else logits.view(b, t, -1)
