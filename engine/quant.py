"""Linear layers and embeddings that keep the GGUF's quantized weights instead of float copies.

Decode at batch 1 reads every weight once per token, so bytes are time: SmolLM2's Q4_1 blocks are
~55 MB against ~425 MB as float32. On CPU, torch's int4 weight-pack kernel takes 4-bit values in
groups of 32 with one scale and zero per group, which is exactly Q4_0/Q4_1 (w = d*q + m), so those
tensors run without requantizing. Q8_0 (SmolLM2's LM head, tied to the embedding) is split into two
4-bit halves and runs through the same kernel (see ``Q8Linear``). Where the CPU has AVX-512 VNNI,
the engine's own kernel (block_matmul.py) runs all three types instead, and torch's is the
fallback (``q4_linear``, ``q8_linear``). Everything else, and every tensor on CUDA, is
dequantized to a dense weight in the compute dtype. Token embeddings are never copied: each step
dequantizes just its rows from the file's memory map.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmtop.engine import block_matmul
from llmtop.engine.gguf import TensorData, TensorRef

GROUP = 32  # elements per GGUF block and per int4-pack group
PACK_ROWS = 4096  # rows packed at a time: the kernel wants int32 input, 4x the bytes of uint8


def int4pack_available(device: torch.device, dtype: torch.dtype, n: int = 16, k: int = 32) -> bool:
    """Whether an [n, k] weight can use the CPU int4 kernel: it wants n % 16 == 0, whole groups
    of 32 along k, and bf16 activations (with float32 it is ~100x slower)."""
    return device.type == "cpu" and dtype == torch.bfloat16 and n % 16 == 0 and k % GROUP == 0


def blocks_kernel_available(device: torch.device, dtype: torch.dtype, n: int, k: int) -> bool:
    """Whether an [n, k] Q4_0/Q4_1/Q8_0 weight can stay in its blocks (``q4_linear``)."""
    return block_matmul.available(device, dtype, n, k) or int4pack_available(device, dtype, n, k)


def q4_linear(q: Tensor, d: Tensor, m: Tensor, dtype: torch.dtype) -> nn.Module:
    """A CPU linear layer for w = q * d + m (q in 0..15): the engine's VNNI kernel where this CPU
    has it (faster at every batch size, and much faster batched), else torch's int4 kernel."""
    if block_matmul.available(torch.device("cpu"), dtype, *q.shape):
        return block_matmul.BlockLinear(q, d, m, bits=4)
    return Int4Linear(q, d, m, dtype)


def q8_linear(q: Tensor, d: Tensor, dtype: torch.dtype) -> nn.Module:
    """A CPU linear layer for w = q * d (q int8), as ``q4_linear`` chooses."""
    if block_matmul.available(torch.device("cpu"), dtype, *q.shape):
        return block_matmul.BlockLinear(
            (q.to(torch.int16) + 128).to(torch.uint8), d, -128 * d, bits=8
        )
    return Q8Linear(q, d, dtype)


class Int4Linear(nn.Module):
    """y = x @ W.T with W stored as 4-bit values in groups of 32: w = (q - 8) * scale + zero."""

    def __init__(self, q: Tensor, d: Tensor, m: Tensor, dtype: torch.dtype) -> None:
        """Args: q uint8 [N, K] in 0..15; d, m float32 [N, K/32] such that w = q * d + m."""
        super().__init__()
        n, k = q.shape[0], d.shape[1] * GROUP
        assert d.shape == m.shape == (n, k // GROUP), (q.shape, d.shape, m.shape)
        self.in_features, self.out_features = k, n
        # packing is local to blocks of 64 rows, so packed chunks concatenate (checked in tests);
        # chunks keep the int32 copy the kernel wants small
        chunks = []
        for i in range(0, n, PACK_ROWS):
            nib = self.nibbles(q[i : i + PACK_ROWS]).to(torch.int32)
            chunks.append(torch.ops.aten._convert_weight_to_int4pack_for_cpu(nib, 1))
        # the kernel computes (q - 8) * scale + zero, so zero = m + 8 d
        sz = torch.stack([d, m + 8 * d], dim=-1).transpose(0, 1).contiguous()  # [K/32, N, 2]
        self.register_buffer("weight", torch.cat(chunks), persistent=False)
        self.register_buffer("scales_and_zeros", sz.to(dtype), persistent=False)

    @staticmethod
    def nibbles(q: Tensor) -> Tensor:
        """Rows of ``q`` as the kernel's unsigned 4-bit values [rows, K]."""
        return q

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        y: Tensor = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.reshape(-1, self.in_features), self.weight, GROUP, self.scales_and_zeros
        )
        return y.view(*shape[:-1], self.out_features)


class Q8Linear(Int4Linear):
    """y = x @ W.T for a Q8_0 weight (w = q * d, q int8), exact, through the int4 kernel.

    q = 16 * hi + lo with lo = q & 15 in 0..15 and hi = q >> 4 in -8..7, so W = [W_hi | W_lo]
    over a doubled K, where W_hi has scale 16 d and zero 0 and W_lo has scale d and zero 8 d;
    the input is repeated: x @ W.T = [x, x] @ [W_hi | W_lo].T. Same bytes as int8 (4 + 4 bits).
    """

    def __init__(self, q: Tensor, d: Tensor, dtype: torch.dtype) -> None:
        """Args: q int8 [N, K]; d float32 [N, K/32] such that w = q * d."""
        # in "w = q * d + m" form: w_hi = (hi + 8) * 16 d - 128 d, w_lo = lo * d
        super().__init__(
            q,
            torch.cat([16 * d, d], dim=1),
            torch.cat([-128 * d, torch.zeros_like(d)], dim=1),
            dtype,
        )

    @staticmethod
    def nibbles(q: Tensor) -> Tensor:
        return torch.cat([(q >> 4) + 8, q & 15], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(torch.cat([x, x], dim=-1))


class DenseLinear(nn.Module):
    """y = x @ W.T with a dense weight in the compute dtype (F16/F32 tensors, CUDA, fp32 mode)."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight = nn.Parameter(weight, requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)


class FileEmbedding(nn.Module):
    """Token embeddings read from the GGUF's memory map: only the looked-up rows are dequantized
    (by the gguf package, any type), so the table itself costs no memory and no load time."""

    def __init__(
        self, data: TensorData, ref: TensorRef, dtype: torch.dtype, device: torch.device
    ) -> None:
        super().__init__()
        self.data, self.ref, self.dtype, self.device = data, ref, dtype, device
        self.dim = ref.shape[1]
        data.dequantize_rows(ref, np.zeros(1, dtype=np.int64))  # an unreadable type fails at load

    def forward(self, ids: Tensor) -> Tensor:
        rows = self.data.dequantize_rows(self.ref, ids.reshape(-1).cpu().numpy())  # [n, dim] fp32
        return rows.view(*ids.shape, self.dim).to(device=self.device, dtype=self.dtype)
