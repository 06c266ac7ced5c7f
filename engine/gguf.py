"""Read a llama GGUF file with the ``gguf`` package: its config, tokenizer metadata and tensors.

Parsing a GGUF header is slow in pure Python (about 2 s for SmolLM2, almost all of it the 98k
tokenizer strings), so ``read_gguf`` returns a ``GGUFIndex``: plain data (config, tokenizer
metadata, and where each tensor lies in the file) that the loader caches as JSON. ``TensorData``
then reads tensor bytes at those offsets, with or without the cache. The GGUF names of the
tensors (``blk.{i}.attn_q.weight``, ...) are mapped onto the model in loader.build_transformer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from gguf.quants import dequantize as gguf_dequantize

from llmtop.engine.errors import ModelLoadError
from llmtop.engine.model import LlamaConfig

Q = gguf.GGMLQuantizationType
K = gguf.Keys


@dataclass(frozen=True, slots=True)
class TensorRef:
    """Where one tensor's bytes lie in the file; ``shape`` is in torch order (out, in)."""

    name: str
    qtype: int
    shape: tuple[int, ...]
    offset: int
    n_bytes: int

    @property
    def type_name(self) -> str:
        return Q(self.qtype).name


@dataclass(frozen=True, slots=True)
class TokenizerMeta:
    """What the tokenizer and chat template need from the file (the vocab itself stays apart)."""

    model: str
    pre: str
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None
    pad_id: int | None
    add_bos: bool
    chat_template: str | None


@dataclass(frozen=True, slots=True)
class GGUFIndex:
    """Everything the loader needs from a GGUF file except the tensor bytes and the vocab."""

    path: str
    name: str
    file_type: str
    config: LlamaConfig
    tokenizer: TokenizerMeta
    tensors: dict[str, TensorRef] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GGUFIndex:
        tensors = {
            k: TensorRef(**{**v, "shape": tuple(v["shape"])}) for k, v in d["tensors"].items()
        }
        return cls(
            path=d["path"],
            name=d["name"],
            file_type=d["file_type"],
            config=LlamaConfig(**d["config"]),
            tokenizer=TokenizerMeta(**d["tokenizer"]),
            tensors=tensors,
        )


@dataclass(frozen=True, slots=True)
class Vocab:
    """The BPE vocabulary: token strings, merges and token types (gguf.TokenType values)."""

    tokens: list[str]
    merges: list[str]
    token_types: list[int]


def open_reader(path: Path) -> gguf.GGUFReader:
    """A GGUFReader, or one clear ModelLoadError for a missing or not-GGUF file."""
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    try:
        return gguf.GGUFReader(path)
    except Exception as exc:  # the reader raises ValueError, IndexError, ... on foreign bytes
        why = " ".join(str(exc).split()) or type(exc).__name__
        raise ModelLoadError(f"{path} is not a GGUF model file ({why})") from None


def read_gguf(path: Path) -> tuple[GGUFIndex, Vocab]:
    """Read the index and the vocab of a llama GGUF file.

    Raises:
        ModelLoadError: the file is missing, not GGUF, not llama, or lacks a needed key.
    """
    reader = open_reader(path)
    fields = reader.fields

    def get(key: str, default: Any = ...) -> Any:
        f = fields.get(key)
        if f is None:
            if default is ...:
                raise ModelLoadError(f"{path}: GGUF metadata has no {key!r}")
            return default
        return f.contents()

    arch = get(K.General.ARCHITECTURE, "unknown")
    if arch != "llama":
        raise ModelLoadError(
            f"{path}: architecture {arch!r} is not supported (the engine runs llama models)"
        )
    a = arch
    n_heads = int(get(K.Attention.HEAD_COUNT.format(arch=a)))
    dim = int(get(K.LLM.EMBEDDING_LENGTH.format(arch=a)))
    head_dim = int(get(K.Attention.KEY_LENGTH.format(arch=a), dim // n_heads))
    rope_dim = int(get(K.Rope.DIMENSION_COUNT.format(arch=a), head_dim))
    if rope_dim != head_dim:
        raise ModelLoadError(
            f"{path}: partial rotary embeddings ({rope_dim} of {head_dim}) are not supported"
        )
    scaling = get(K.Rope.SCALING_TYPE.format(arch=a), "none")
    if scaling not in ("none", "linear") or get(K.Rope.SCALING_FACTOR.format(arch=a), 1.0) != 1.0:
        raise ModelLoadError(f"{path}: RoPE scaling {scaling!r} is not supported")

    tensors: dict[str, TensorRef] = {}
    for t in reader.tensors:
        tensors[t.name] = TensorRef(
            name=t.name,
            qtype=int(t.tensor_type),
            shape=tuple(int(s) for s in reversed(t.shape.tolist())),
            offset=int(t.data_offset),
            n_bytes=int(t.n_bytes),
        )
    tokens = get(K.Tokenizer.LIST)
    vocab_size = int(get(K.LLM.VOCAB_SIZE.format(arch=a), len(tokens)))
    config = LlamaConfig(
        n_layers=int(get(K.LLM.BLOCK_COUNT.format(arch=a))),
        dim=dim,
        n_heads=n_heads,
        n_kv_heads=int(get(K.Attention.HEAD_COUNT_KV.format(arch=a), n_heads)),
        head_dim=head_dim,
        ffn_dim=int(get(K.LLM.FEED_FORWARD_LENGTH.format(arch=a))),
        vocab_size=vocab_size,
        rope_theta=float(get(K.Rope.FREQ_BASE.format(arch=a), 10000.0)),
        rms_eps=float(get(K.Attention.LAYERNORM_RMS_EPS.format(arch=a), 1e-5)),
        context_length=int(get(K.LLM.CONTEXT_LENGTH.format(arch=a), 2048)),
        tied_embeddings="output.weight" not in tensors,
    )
    tok = TokenizerMeta(
        model=str(get(K.Tokenizer.MODEL, "gpt2")),
        pre=str(get(K.Tokenizer.PRE, "default")),
        bos_id=_opt_int(get(K.Tokenizer.BOS_ID, None)),
        eos_id=_opt_int(get(K.Tokenizer.EOS_ID, None)),
        eot_id=_opt_int(get(K.Tokenizer.EOT_ID, None)),
        pad_id=_opt_int(get(K.Tokenizer.PAD_ID, None)),
        add_bos=bool(get(K.Tokenizer.ADD_BOS, False)),
        chat_template=get(K.Tokenizer.CHAT_TEMPLATE, None),
    )
    vocab = Vocab(
        tokens=list(tokens),
        merges=list(get(K.Tokenizer.MERGES, [])),
        token_types=[int(x) for x in get(K.Tokenizer.TOKEN_TYPE, [1] * len(tokens))],
    )
    index = GGUFIndex(
        path=str(path),
        name=str(get(K.General.NAME, path.stem)),
        file_type=_file_type_name(get(K.General.FILE_TYPE, None)),
        config=config,
        tokenizer=tok,
        tensors=tensors,
    )
    check_tensors(index)
    return index, vocab


def check_tensors(index: GGUFIndex) -> None:
    """Every tensor the model needs is present with the shape the config implies."""
    c = index.config
    kv = c.n_kv_heads * c.head_dim
    want: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (c.vocab_size, c.dim),
        "output_norm.weight": (c.dim,),
    }
    if not c.tied_embeddings:
        want["output.weight"] = (c.vocab_size, c.dim)
    for i in range(c.n_layers):
        want |= {
            f"blk.{i}.attn_norm.weight": (c.dim,),
            f"blk.{i}.attn_q.weight": (c.n_heads * c.head_dim, c.dim),
            f"blk.{i}.attn_k.weight": (kv, c.dim),
            f"blk.{i}.attn_v.weight": (kv, c.dim),
            f"blk.{i}.attn_output.weight": (c.dim, c.n_heads * c.head_dim),
            f"blk.{i}.ffn_norm.weight": (c.dim,),
            f"blk.{i}.ffn_gate.weight": (c.ffn_dim, c.dim),
            f"blk.{i}.ffn_up.weight": (c.ffn_dim, c.dim),
            f"blk.{i}.ffn_down.weight": (c.dim, c.ffn_dim),
        }
    for name, shape in want.items():
        ref = index.tensors.get(name)
        if ref is None:
            raise ModelLoadError(f"{index.path}: tensor {name!r} is missing")
        if ref.shape != shape:
            raise ModelLoadError(
                f"{index.path}: tensor {name!r} has shape {ref.shape}, expected {shape}"
            )


class TensorData:
    """The tensor bytes of one GGUF file.

    Whole tensors (to convert at load) are read into fresh buffers that are freed once converted;
    single rows (embedding lookups) come from a read-only memory map. Mapping whole tensors would
    leave every page of the file in this process's RSS.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = path.stat().st_size
        self._map: np.memmap | None = None

    def _check(self, ref: TensorRef) -> None:
        if ref.offset + ref.n_bytes > self.size:
            raise ModelLoadError(f"{self.path}: tensor {ref.name!r} runs past the end of the file")

    def raw(self, ref: TensorRef) -> np.ndarray:
        """A copy of the bytes of ``ref`` as [rows, bytes per row] uint8 (rows = shape[0])."""
        self._check(ref)
        buf = np.fromfile(self.path, dtype=np.uint8, count=ref.n_bytes, offset=ref.offset)
        return buf.reshape(ref.shape[0], -1)

    def mapped(self, ref: TensorRef) -> np.ndarray:
        """The bytes of ``ref`` as a read-only memory-mapped [rows, bytes per row] view."""
        self._check(ref)
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._map[ref.offset : ref.offset + ref.n_bytes].reshape(ref.shape[0], -1)

    def _float(self, ref: TensorRef, raw: np.ndarray) -> np.ndarray:
        """Blocks of ``ref``'s type -> float32 values, through the gguf package."""
        try:
            if ref.qtype == Q.F32:
                return raw.view(np.float32)
            if ref.qtype == Q.F16:
                return raw.view(np.float16).astype(np.float32)
            return gguf_dequantize(raw, Q(ref.qtype))
        except NotImplementedError:
            raise ModelLoadError(
                f"{self.path}: tensor {ref.name!r} has type {ref.type_name}, "
                "which the gguf package cannot dequantize"
            ) from None

    def dequantize(self, ref: TensorRef) -> torch.Tensor:
        """The whole tensor as float32 in torch order."""
        w = self._float(ref, self.raw(ref))
        return torch.tensor(np.asarray(w).reshape(ref.shape), dtype=torch.float32)

    def dequantize_rows(self, ref: TensorRef, rows: np.ndarray) -> torch.Tensor:
        """Rows ``rows`` of a 2-D tensor as float32 [len(rows), shape[1]]; only they are read."""
        w = self._float(ref, self.mapped(ref)[rows])
        return torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32).reshape(len(rows), -1))

    def q4_fields(self, ref: TensorRef) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The 4-bit values and per-32 scales of a Q4_0/Q4_1 tensor, so that w = q * d + m.

        Returns:
            q: uint8 [N, K] in 0..15; d and m: float32 [N, K / 32] (Q4_0 has m = -8 d).
        """
        n, k = ref.shape
        raw = self.raw(ref).reshape(n, k // 32, -1)
        d = torch.from_numpy(raw[..., 0:2].copy().view(np.float16)[..., 0]).float()
        if ref.qtype == Q.Q4_1:
            m = torch.from_numpy(raw[..., 2:4].copy().view(np.float16)[..., 0]).float()
            qs = raw[..., 4:]
        elif ref.qtype == Q.Q4_0:
            m = -8.0 * d
            qs = raw[..., 2:]
        else:
            raise ValueError(f"{ref.name} is {ref.type_name}, not Q4_0/Q4_1")
        codes = torch.from_numpy(np.ascontiguousarray(qs))
        # each 18/20-byte block holds elements 0..15 in the low nibbles, 16..31 in the high ones
        q = torch.cat([codes & 15, codes >> 4], dim=-1).reshape(n, k)
        return q, d, m

    def q8_fields(self, ref: TensorRef) -> tuple[torch.Tensor, torch.Tensor]:
        """The int8 values and per-32 scales of a Q8_0 tensor, so that w = q * d.

        Returns:
            q: int8 [N, K]; d: float32 [N, K / 32].
        """
        if ref.qtype != Q.Q8_0:
            raise ValueError(f"{ref.name} is {ref.type_name}, not Q8_0")
        n, k = ref.shape
        raw = self.raw(ref).reshape(n, k // 32, 34)
        d = torch.from_numpy(raw[..., 0:2].copy().view(np.float16)[..., 0]).float()
        q = torch.from_numpy(raw[..., 2:].copy().view(np.int8)).reshape(n, k)
        return q, d


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


def _file_type_name(v: Any) -> str:
    if v is None:
        return "unknown"
    try:
        return gguf.LlamaFileType(int(v)).name.removeprefix("MOSTLY_")
    except ValueError:
        return str(v)
