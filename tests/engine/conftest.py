"""Engine fixtures: the real bundled SmolLM2 (loaded once per session) and a tiny random-weight
llama GGUF written at test time (support/tiny_gguf.py).

Engine tests run torch on one thread: on a shared 2-core machine, two OpenMP threads that wait on
each other while a neighbour holds a core run several times slower, and one thread also keeps
reductions in one order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from support.tiny_gguf import write_tiny_gguf

from llmtop.engine import native
from llmtop.engine.errors import ModelLoadError
from llmtop.engine.loader import LoadedModel, default_model_path, load_model

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture
def kernels() -> None:
    """Skip where the engine's C kernels cannot run (no AVX-512 VNNI or no compiler). A fixture,
    not a ``skipif(native.library() is None)`` mark: a mark's condition runs when the module is
    collected, before ``private_dirs`` has moved the kernels' cache into the session's temp dir."""
    if native.library() is None:
        pytest.skip("no AVX-512 VNNI or no compiler")


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny(tiny_gguf: Path) -> LoadedModel:
    """The tiny model in the default (bf16, quantized kernels) mode, no disk cache."""
    return load_model(tiny_gguf, cache_dir=None)


@pytest.fixture(scope="session")
def tiny32(tiny_gguf: Path) -> LoadedModel:
    """The tiny model in float32 (dense dequantized weights): exact arithmetic to compare with."""
    return load_model(tiny_gguf, dtype="float32", cache_dir=None)


@pytest.fixture(scope="session")
def smollm_path() -> Path:
    try:
        return default_model_path()
    except ModelLoadError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def engine_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session's own engine cache dir, so the first load really parses the GGUF."""
    return tmp_path_factory.mktemp("engine-cache")


@pytest.fixture(scope="session")
def smollm(smollm_path: Path, engine_cache: Path) -> LoadedModel:
    """The bundled SmolLM2 in its default mode, loaded once per session (cold: parses the file)."""
    return load_model(smollm_path, cache_dir=engine_cache)


@pytest.fixture(scope="session")
def reference() -> dict:
    """Hugging Face transformers' float32 outputs on the same GGUF (make_engine_reference.py)."""
    return json.loads((DATA / "engine_reference.json").read_text())
