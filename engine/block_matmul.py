"""y = x @ W.T over GGUF's 4/8-bit blocks with the engine's own kernel (native_matmul.c).

Why our own: torch's CPU int4 kernel re-expands the 4-bit weights for every 4 rows of input, so
a decode step over 8 sequences cost ~3x one over a single sequence, although the weights it
reads (the cost of decode) are the same. Batching was worth little that way. This kernel
unpacks each block of weights once for up to 8 rows and multiplies in integers (AVX-512 VNNI
``vpdpbusd``, 64 byte products per instruction) against the activations quantized per block of
32 to 15 bits (two int8 halves). Every product of a weight code and an activation code is
exact; the only roundings are the activations' 15-bit step and the bf16 output, so it is more
accurate than torch's kernel (which rounds each weight to bf16) and than llama.cpp's (8-bit
activations). Rows go through in pairs (two rows per vector, one activation load for both), which
matters at 8 rows, where the kernel is bound by instructions rather than memory. Measured here
(SmolLM2-135M's shapes, 2 threads): a whole model's matmuls at 1 row 1.5-1.7 ms against torch's
3.2; at 8 rows 3.7 ms against 8.3 (4.3 before the pairs); at 64 rows 23 against 60.

Where ``native.library()`` is None, ``quant.q4_linear`` / ``q8_linear`` fall back to torch's
int4 kernel.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from llmtop.engine import native

GROUP, COLUMNS = 32, 16  # inputs per block, columns per kernel group


def available(device: torch.device, dtype: torch.dtype, n: int, k: int) -> bool:
    """Whether an [n, k] weight runs on this kernel: CPU, bf16 activations, whole groups."""
    return (
        device.type == "cpu"
        and dtype == torch.bfloat16
        and n % COLUMNS == 0
        and k % GROUP == 0
        and native.library() is not None
    )


def pack_codes(u: np.ndarray, bits: int) -> np.ndarray:
    """Codes [N, K] (uint8) in the kernel's order: per 16 columns and 32 inputs, 4 inputs x 16
    columns per 64 bytes; with 4 bits, inputs 16-31 go into the high nibbles of inputs 0-15."""
    n, k = u.shape
    t = u.reshape(n // COLUMNS, COLUMNS, k // GROUP, 8, 4).transpose(0, 2, 3, 1, 4)
    if bits == 4:
        t = t[:, :, :4] | (t[:, :, 4:] << 4)
    return np.ascontiguousarray(t).reshape(-1)


def pack_scales(s: Tensor) -> Tensor:
    """Per-block floats [N, K/32] -> fp16 [N/16, K/32, 16]; GGUF's scales are fp16 already."""
    n, nb = s.shape
    return s.reshape(n // COLUMNS, COLUMNS, nb).transpose(1, 2).contiguous().to(torch.float16)


class BlockLinear(nn.Module):
    """y = x @ W.T, W = d * u + m per block of 32 inputs, u 4- or 8-bit codes (module doc)."""

    codes: Tensor  # buffers (register_buffer): declared so that their types are known
    scale: Tensor
    offset: Tensor

    def __init__(self, u: Tensor, d: Tensor, m: Tensor, bits: int) -> None:
        """Args: u uint8 [N, K] codes (< 16 when bits is 4); d, m float32 [N, K/32]."""
        super().__init__()
        n, k = u.shape
        assert d.shape == m.shape == (n, k // GROUP) and bits in (4, 8), (u.shape, d.shape)
        self.in_features, self.out_features, self.bits = k, n, bits
        codes = torch.from_numpy(pack_codes(u.numpy().astype(np.uint8, copy=False), bits))
        self.register_buffer("codes", codes, persistent=False)
        self.register_buffer("scale", pack_scales(d), persistent=False)
        self.register_buffer("offset", pack_scales(m), persistent=False)
        lib = native.library()
        assert lib is not None, "BlockLinear needs the engine's kernels (see available())"
        self._fn = lib.llmtop_block_matmul
        self._args = (bits, codes.data_ptr(), self.scale.data_ptr(), self.offset.data_ptr(), n, k)

    def weights(self) -> tuple[Tensor, Tensor, Tensor]:
        """The kernel's codes, scales and offsets (native_forward.py hands them to C)."""
        return self.codes, self.scale, self.offset

    def forward(self, x: Tensor) -> Tensor:
        assert x.dtype == torch.bfloat16 and x.device.type == "cpu", (x.dtype, x.device)
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).contiguous()
        y = torch.empty(x2.shape[0], self.out_features, dtype=torch.bfloat16)
        if self._fn(*self._args, x2.data_ptr(), x2.shape[0], y.data_ptr()) != 0:
            raise MemoryError("engine matmul: out of memory for the activations")
        return y.view(*shape[:-1], self.out_features)
