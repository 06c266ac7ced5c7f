"""The engine's own block-weight matmul (engine/block_matmul.py, native_matmul.c): what it
computes, that a row's result does not depend on the rows batched with it, and the fallback to
torch's kernel."""

from __future__ import annotations

import pytest
import torch
from support.tiny_gguf import TINY

from llmtop.engine import block_matmul, native
from llmtop.engine.gguf import Q, TensorData, read_gguf
from llmtop.engine.loader import load_model
from llmtop.engine.quant import DenseLinear, Int4Linear, q4_linear, q8_linear

needs_kernels = pytest.mark.usefixtures("kernels")
GEN = torch.Generator().manual_seed(0)


def layers(tiny_gguf) -> list[tuple[str, torch.nn.Module, torch.Tensor]]:
    """(name, kernel layer, dense float32 weight) for a Q4_1, a Q4_0 and a Q8_0 tensor."""
    index, _ = read_gguf(tiny_gguf)
    data = TensorData(tiny_gguf)
    out = []
    for name in ("blk.0.ffn_gate.weight", "blk.1.attn_q.weight", "token_embd.weight"):
        ref = index.tensors[name]
        if ref.qtype == Q.Q8_0:
            layer = q8_linear(*data.q8_fields(ref), dtype=torch.bfloat16)
        else:
            layer = q4_linear(*data.q4_fields(ref), dtype=torch.bfloat16)
        out.append((f"{name} {ref.type_name}", layer, data.dequantize(ref)))
    assert {n.split()[1] for n, _, _ in out} == {"Q4_1", "Q4_0", "Q8_0"}
    return out


@needs_kernels
def test_kernel_computes_x_times_the_block_weight(tiny_gguf):
    """Exact integer products of 15-bit activation codes and the weights' own codes: the error
    is the bf16 rounding of the output (2^-9 relative) and the activations' 15-bit step, well
    inside torch's int4 kernel's (which rounds each weight to bf16)."""
    x = torch.randn(37, TINY["dim"], generator=GEN).bfloat16()
    for name, layer, w in layers(tiny_gguf):
        assert isinstance(layer, block_matmul.BlockLinear), name
        want = x.float() @ w.T
        err = (layer(x).float() - want).abs()
        assert (err <= want.abs() * 2**-8 + 1e-3 * want.abs().max()).all(), (name, err.max())


@needs_kernels
def test_more_accurate_than_torch_int4_kernel(tiny_gguf):
    index, _ = read_gguf(tiny_gguf)
    data = TensorData(tiny_gguf)
    ref = index.tensors["blk.0.ffn_gate.weight"]
    x = torch.randn(16, TINY["dim"], generator=GEN).bfloat16()
    want = DenseLinear(data.dequantize(ref))(x.float())
    ours = (q4_linear(*data.q4_fields(ref), dtype=torch.bfloat16)(x).float() - want).abs()
    torchs = (Int4Linear(*data.q4_fields(ref), dtype=torch.bfloat16)(x).float() - want).abs()
    assert ours.mean() < torchs.mean(), (ours.mean(), torchs.mean())


@needs_kernels
@pytest.mark.parametrize("rows", [1, 2, 3, 7, 8, 9, 16, 21, 64])
def test_a_rows_result_does_not_depend_on_its_batch(tiny_gguf, rows):
    """Single rows, pairs, tiles of 8 rows and their remainders (native_matmul.c's paths): every
    row is bit-identical to the row alone, so
    batched decode gives each sequence the logits it gets alone (as far as the matmuls go)."""
    x = torch.randn(rows, TINY["dim"], generator=GEN).bfloat16()
    for name, layer, _ in layers(tiny_gguf):
        together = layer(x)
        alone = torch.cat([layer(x[i : i + 1]) for i in range(rows)])
        assert torch.equal(together, alone), name
        assert torch.equal(layer(x[None]), together[None]), name  # [1, rows, K] as a batch


@needs_kernels
def test_zero_rows_and_zero_blocks(tiny_gguf):
    """An all-zero block has scale 0; it must give exactly the offset terms' zero, not NaN."""
    _, layer, w = layers(tiny_gguf)[0]
    x = torch.zeros(3, TINY["dim"]).bfloat16()
    x[1, 32:64] = 1.0
    y = layer(x).float()
    assert torch.equal(y[0], torch.zeros_like(y[0])) and torch.isfinite(y).all()
    torch.testing.assert_close(y[1], w[:, 32:64].sum(1), atol=1e-2, rtol=2**-8)


def test_default_mode_uses_the_engine_kernel_and_torch_is_the_fallback(
    tiny_gguf, tmp_path, monkeypatch
):
    kinds = {type(m).__name__ for m in load_model(tiny_gguf, cache_dir=None).model.modules()}
    assert ("BlockLinear" in kinds) == (native.library() is not None)
    monkeypatch.setenv("LLMTOP_ENGINE_KERNEL", "torch")
    native.library.cache_clear()
    try:
        kinds = {type(m).__name__ for m in load_model(tiny_gguf, cache_dir=None).model.modules()}
        assert {"Int4Linear", "Q8Linear"} <= kinds and "BlockLinear" not in kinds
    finally:
        native.library.cache_clear()


def test_no_compiler_means_torch_kernel_not_an_error(tmp_path, monkeypatch, caplog):
    """A machine without a C compiler (or one that fails) still runs the engine."""
    monkeypatch.setenv("LLMTOP_ENGINE_CACHE", str(tmp_path))  # nothing built there yet
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    native.library.cache_clear()
    try:
        assert native.library() is None
        assert not block_matmul.available(torch.device("cpu"), torch.bfloat16, 64, 64)
    finally:
        native.library.cache_clear()
    if native.cpu_supported():
        assert "engine kernels not built" in caplog.text


@pytest.mark.skipif(native.compiler() is None or not native.cpu_supported(), reason="no kernels")
def test_a_damaged_or_unwritable_kernel_cache_means_torch_kernel(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("LLMTOP_ENGINE_CACHE", str(tmp_path))
    kernels_dir = native.cache_dir()
    try:
        kernels_dir.parent.mkdir(parents=True, exist_ok=True)
        kernels_dir.write_text("a file where the kernels' directory should be")
        native.library.cache_clear()
        assert native.library() is None
        kernels_dir.unlink()
        kernels_dir.mkdir()
        native.target_path(native.compiler()).write_bytes(b"not a shared object")
        native.library.cache_clear()
        assert native.library() is None
    finally:
        native.library.cache_clear()
    assert "engine kernels not" in caplog.text
