"""The tokenizer from the GGUF vocab (HF ``tokenizers``, no hand-written BPE) and its chat template.

Building the BPE from the file's 49k tokens and merges takes ~0.2 s and parsing them out of the
GGUF ~2 s, so the loader saves the built tokenizer as tokenizer.json beside its cached index and
reloads it with ``Tokenizer.from_file`` (~80 ms). The chat template is the file's own Jinja
template, rendered in a sandbox as transformers renders it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gguf
import jinja2
import tokenizers
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers

from llmtop.engine.errors import ModelLoadError, RequestError
from llmtop.engine.gguf import TokenizerMeta, Vocab

# llama.cpp's "pre" tokenizer names -> how text is split before BPE (from llama.cpp's llama-vocab).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    if pre == "smollm":  # \p{N} split one digit at a time, then the GPT-2 regex
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    if pre in ("default", "gpt2", "gpt-2"):
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("llama-bpe", "llama3", "smaug-bpe"):
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    raise ModelLoadError(f"tokenizer pre-tokenizer {pre!r} is not supported")


def build_tokenizer(vocab: Vocab, meta: TokenizerMeta) -> tokenizers.Tokenizer:
    """A byte-level BPE tokenizer equal to the one llama.cpp and transformers build from the file."""
    if meta.model != "gpt2":
        raise ModelLoadError(
            f"tokenizer model {meta.model!r} is not supported (the engine reads byte-level BPE, 'gpt2')"
        )
    bpe = models.BPE(
        vocab={t: i for i, t in enumerate(vocab.tokens)},
        merges=[(a, b) for a, b in (m.split(" ", 1) for m in vocab.merges)],
        fuse_unk=False,
        byte_fallback=False,
    )
    tk = tokenizers.Tokenizer(bpe)
    tk.pre_tokenizer = _pre_tokenizer(meta.pre)
    tk.decoder = decoders.ByteLevel()
    added = []
    for i, ty in enumerate(vocab.token_types):
        if ty in (gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED):
            special = ty == gguf.TokenType.CONTROL
            added.append(AddedToken(vocab.tokens[i], special=special, normalized=False))
    tk.add_special_tokens([a for a in added if a.special])
    tk.add_tokens([a for a in added if not a.special])
    return tk


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)


class Tokenizer:
    """Encode, decode (whole or streaming) and chat-format text for one model."""

    def __init__(self, tk: tokenizers.Tokenizer, meta: TokenizerMeta) -> None:
        self.tk, self.meta = tk, meta
        self.bos_token = self._token(meta.bos_id)
        self.eos_token = self._token(meta.eos_id)
        self.stop_ids: frozenset[int] = frozenset(
            i for i in (meta.eos_id, meta.eot_id) if i is not None
        )
        self._template: jinja2.Template | None = None
        if meta.chat_template:
            env = ImmutableSandboxedEnvironment(
                trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
            )
            env.globals["raise_exception"] = _raise
            try:
                self._template = env.from_string(meta.chat_template)
            except jinja2.TemplateError as exc:
                raise ModelLoadError(f"the model's chat template does not parse: {exc}") from None

    @classmethod
    def from_file(cls, path: Path, meta: TokenizerMeta) -> Tokenizer:
        return cls(tokenizers.Tokenizer.from_file(str(path)), meta)

    def save(self, path: Path) -> None:
        self.tk.save(str(path))

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size(with_added_tokens=True)

    def _token(self, i: int | None) -> str:
        return "" if i is None else (self.tk.id_to_token(i) or "")

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids of ``text``; special tokens written in the text become their ids.

        Args:
            add_bos: put the BOS token first; default: what the file says (``add_bos_token``).
        """
        try:
            ids = self.tk.encode(text, add_special_tokens=False).ids
        except TypeError:  # a lone surrogate (JSON allows "\ud800"): not encodable, so U+FFFD
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            ids = self.tk.encode(text, add_special_tokens=False).ids
        bos = self.meta.add_bos if add_bos is None else add_bos
        if bos and self.meta.bos_id is not None and (not ids or ids[0] != self.meta.bos_id):
            ids.insert(0, self.meta.bos_id)
        return ids

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        return self.tk.decode(list(ids), skip_special_tokens=skip_special)

    def stream(self, skip_special: bool = True) -> TextStream:
        """An incremental decoder: feed ids one at a time, get text as soon as it is whole UTF-8."""
        return TextStream(self.tk, skip_special)

    @property
    def has_chat_template(self) -> bool:
        return self._template is not None

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True
    ) -> str:
        """The prompt text for a chat, rendered with the model's own template.

        Raises:
            RequestError: the model has no chat template, or the template rejects the messages.
        """
        if self._template is None:
            raise RequestError("this model has no chat template; send a raw prompt instead")
        try:
            return self._template.render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except jinja2.TemplateError as exc:
            raise RequestError(f"the chat template rejected the messages: {exc}") from None


class TextStream:
    """Text deltas of a growing token sequence; multi-byte characters wait for their last byte."""

    def __init__(self, tk: tokenizers.Tokenizer, skip_special: bool) -> None:
        self.tk = tk
        self.ds = decoders.DecodeStream(skip_special_tokens=skip_special)

    def step(self, token_id: int) -> str:
        return self.ds.step(self.tk, token_id) or ""
