"""Put the served model together: load it, give it a KV cache of ``max_batch`` slots, start the
scheduler thread, wire /metrics, and describe the model for the listing endpoints.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmtop.engine import native
from llmtop.engine.errors import ModelLoadError
from llmtop.engine.loader import LoadedModel, default_model_path, load_model
from llmtop.engine.metrics import EngineMetrics, SchedulerGauges
from llmtop.engine.model_runner import ModelRunner
from llmtop.engine.model_service import ModelCard, ModelService, RequestLimits
from llmtop.engine.scheduler import Scheduler
from llmtop.engine.serve_options import DEFAULT_CONTEXT, ServeOptions
from llmtop.engine.tokenizer import Tokenizer

BUNDLED_NAME = "smollm2"


@dataclass(slots=True)
class Served:
    """Everything ``llmtop serve`` runs, ready for the HTTP layer."""

    service: ModelService
    scheduler: Scheduler
    metrics: EngineMetrics
    runner: ModelRunner
    loaded: LoadedModel


class _Codec:
    """The engine's tokenizer as the service's ``TextCodec``."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.vocab_size

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        return self.tokenizer.encode(text, add_bos=add_bos)

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])


def resolve_model(model: str) -> tuple[Path | None, str]:
    """The file to load (``None``: the bundled one) and the name clients use for it."""
    if model in (BUNDLED_NAME, f"{BUNDLED_NAME}:latest"):
        return None, BUNDLED_NAME
    path = Path(model).expanduser()
    if path.suffix != ".gguf" and not path.exists():
        raise ModelLoadError(
            f"unknown model '{model}': use '{BUNDLED_NAME}' or the path of a .gguf file"
        )
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    return path, path.name.removesuffix(".gguf")


Progress = Callable[[str], None]
"""Told what the start is doing now (loading the model, building kernels, warming up): the
start takes seconds to tens of seconds and must not be silent."""


def _quiet(text: str) -> None:
    """A ``Progress`` that says nothing."""


def start(options: ServeOptions, progress: Progress = _quiet) -> Served:
    """Load the model and start the engine thread (which then runs the scheduler loop).

    The model is loaded, warmed up and run on one thread: torch work spread over two threads
    makes two OpenMP thread teams fight over the cores (decode steps measured 2x slower).

    Raises:
        ModelLoadError: the model cannot be found, read or run (one line, for the CLI).
    """
    path, name = resolve_model(options.model)
    built: list[Served] = []
    failed: list[BaseException] = []
    ready = threading.Event()

    def engine_thread() -> None:
        try:
            built.append(_build(options, path, name, progress))
        except BaseException as e:
            failed.append(e)
            return
        finally:
            ready.set()
        built[0].scheduler.run()

    threading.Thread(target=engine_thread, name="llmtop-engine", daemon=True).start()
    ready.wait()
    if failed:
        raise failed[0]
    return built[0]


def _build(options: ServeOptions, path: Path | None, name: str, progress: Progress) -> Served:
    where = path or default_model_path()
    progress(f"loading {name} ({where.name})")
    loaded = load_model(path, threads=options.threads)  # here: the engine thread's own setting
    progress(f"loaded {name} in {loaded.load_ns / 1e9:.1f} s")
    if options.context_length and options.context_length > loaded.config.context_length:
        raise ModelLoadError(
            f"--ctx {options.context_length} is longer than the model's context of "
            f"{loaded.config.context_length} tokens"
        )
    ctx = options.context_length or min(DEFAULT_CONTEXT, loaded.config.context_length)
    runner = ModelRunner(loaded.model, options.max_batch, ctx)
    if native.will_build():
        progress("building the engine's C kernels (once per version and compiler)")
        native.library()
    progress(f"warming up {options.max_batch} batch slots")
    warm_up(runner)
    metrics = EngineMetrics(name)
    tokenizer = loaded.tokenizer
    scheduler = Scheduler(
        runner,
        lambda: tokenizer.stream().step,
        sorted(tokenizer.stop_ids),
        max_batch=options.max_batch,
        observer=metrics,
    )
    metrics.bind(
        SchedulerGauges(
            running=lambda: scheduler.n_running,
            waiting=lambda: scheduler.n_waiting,
            kv_used_fraction=lambda: scheduler.kv_tokens / scheduler.kv_capacity_tokens,
            kv_used_bytes=lambda: scheduler.kv_tokens * runner.kv_bytes_per_token,
            kv_capacity_bytes=lambda: runner.kv_capacity_bytes,
            batch_size=lambda: scheduler.batch_size,
        )
    )
    card = model_card(loaded, name, path or default_model_path(), runner.context_length)
    limits = RequestLimits(options.max_body_bytes, options.max_queue)
    service = ModelService(
        card,
        _Codec(tokenizer),
        scheduler,
        runner.kv_capacity_bytes,
        max_batch=options.max_batch,
        limits=limits,
    )
    return Served(service, scheduler, metrics, runner, loaded)


def warm_up(runner: ModelRunner) -> None:
    """Prefills and decode steps at batch 1, 2 and full before the server says it is ready: the
    first forwards of a process are several times slower (measured: the first two prompt-sized
    prefills take 200 and 80 ms instead of 35), and that would land in the first clients' TTFT.
    Every row uses slot 0, so the other slots' memory stays untouched."""
    with torch.inference_mode():
        slot = runner.acquire()
        try:
            for n in (8, 64, 64):
                runner.prefill(slot, [0] * n, 0)
            for batch in sorted({1, 2, runner.slots}):
                runner.decode([slot] * batch, [0] * batch, [n] * batch)
        finally:
            runner.release(slot)


def model_card(loaded: LoadedModel, name: str, path: Path, context_length: int) -> ModelCard:
    index, cfg, tok = loaded.index, loaded.config, loaded.tokenizer.meta
    n_params = sum(math.prod(t.shape) for t in index.tensors.values())
    arch = "llama"
    info: dict[str, Any] = {
        "general.architecture": arch,
        "general.name": index.name,
        "general.file_type": index.file_type,
        "general.parameter_count": n_params,
        f"{arch}.block_count": cfg.n_layers,
        f"{arch}.context_length": cfg.context_length,
        f"{arch}.embedding_length": cfg.dim,
        f"{arch}.feed_forward_length": cfg.ffn_dim,
        f"{arch}.attention.head_count": cfg.n_heads,
        f"{arch}.attention.head_count_kv": cfg.n_kv_heads,
        f"{arch}.attention.key_length": cfg.head_dim,
        f"{arch}.attention.layer_norm_rms_epsilon": cfg.rms_eps,
        f"{arch}.rope.freq_base": cfg.rope_theta,
        f"{arch}.vocab_size": cfg.vocab_size,
        "tokenizer.ggml.model": tok.model,
        "tokenizer.ggml.pre": tok.pre,
        "tokenizer.ggml.bos_token_id": tok.bos_id,
        "tokenizer.ggml.eos_token_id": tok.eos_id,
    }
    st = path.stat()
    return ModelCard(
        name=name,
        path=path,
        file_size=st.st_size,
        mtime_s=st.st_mtime,
        architecture=arch,
        parameter_count=n_params,
        quantization=index.file_type,
        context_length=context_length,
        weights_bytes=loaded.weight_bytes,
        device=str(loaded.device),
        chat_template=tok.chat_template,
        model_info=info,
    )
