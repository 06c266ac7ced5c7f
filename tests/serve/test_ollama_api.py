"""Ollama's API of ``llmtop serve``, driven by the official ``ollama`` Python client."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx
import ollama
import pytest

MODEL = "smollm2"
PROMPT = "What is AI?"
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def client(url: str) -> ollama.Client:
    return ollama.Client(host=url, timeout=120)


def test_generate_streams_pieces_then_a_final_line_with_engine_timings(client):
    t0 = time.perf_counter_ns()
    chunks, arrivals = [], []
    for chunk in client.generate(MODEL, PROMPT, stream=True, options={**GREEDY, "num_predict": 8}):
        chunks.append(chunk)
        arrivals.append(time.perf_counter_ns())
    wall_ns = time.perf_counter_ns() - t0
    *pieces, final = chunks
    assert pieces and all(not c.done and c.response for c in pieces)
    assert final.done and final.response == "" and final.done_reason == "length"
    assert final.eval_count == 8 and final.prompt_eval_count > 5
    durations = [final.total_duration, final.load_duration, final.prompt_eval_duration,
                 final.eval_duration]  # fmt: skip
    assert all(isinstance(d, int) and d > 0 for d in durations), durations
    # ns, measured by the engine: inside what the client saw, and adding up. Not a share of the
    # client's wall time: that holds the client's own start and reads, which a busy machine
    # can stretch to many times the engine's 0.1 s; a count of us would be 1/1000 of it.
    assert final.prompt_eval_duration + final.eval_duration <= final.total_duration <= wall_ns
    assert final.total_duration > wall_ns / 100, (final.total_duration, wall_ns)
    # The client's own clock: the first token cannot come before queue + prefill were done.
    # (Decode on both clocks, request by request: collectors/test_engine_backend.py.)
    assert arrivals[0] - t0 >= final.load_duration + final.prompt_eval_duration
    assert len(final.context) == final.prompt_eval_count + final.eval_count
    # created_at: RFC 3339 UTC with microseconds, as Ollama writes it; now, and in order
    stamps = [datetime.strptime(c.created_at, "%Y-%m-%dT%H:%M:%S.%fZ") for c in chunks]
    now = datetime.now(UTC).replace(tzinfo=None)
    assert stamps == sorted(stamps) and abs((now - stamps[-1]).total_seconds()) < 60


def test_chat_streams_and_non_streaming_returns_the_same_text(client):
    messages = [{"role": "user", "content": "Name three colors."}]
    options = {**GREEDY, "num_predict": 10}
    streamed = list(client.chat(MODEL, messages=messages, stream=True, options=options))
    *pieces, final = streamed
    assert all(c.message.role == "assistant" and not c.done for c in pieces)
    assert final.done and final.done_reason in ("stop", "length") and final.eval_count <= 10
    whole = client.chat(MODEL, messages=messages, stream=False, options=options)
    assert whole.done and whole.message.content == "".join(c.message.content for c in pieces)
    assert whole.eval_count == final.eval_count and whole.total_duration > 0


def test_non_streaming_generate(client):
    r = client.generate(MODEL, PROMPT, stream=False, options={**GREEDY, "num_predict": 6})
    assert r.done and r.response and r.eval_count == 6 and r.done_reason == "length"


def test_seeded_sampling_is_reproducible_and_the_seed_matters(client):
    def run(seed: int) -> str:
        options = {"temperature": 1.5, "top_k": 0, "top_p": 1.0, "seed": seed, "num_predict": 16}
        return client.generate(MODEL, "Tell me a story.", options=options).response

    a, b, c = run(7), run(7), run(8)
    assert a == b
    assert a != c


@pytest.mark.parametrize("n", [1, 3, 11])
def test_num_predict_is_exact(client, n):
    r = client.generate(MODEL, "Write a long essay about the ocean.",
                        options={**GREEDY, "num_predict": n})  # fmt: skip
    assert r.eval_count == n and r.done_reason == "length"


def test_stop_string_ends_the_answer_before_it(client):
    options = {**GREEDY, "num_predict": 16}
    full = client.generate(MODEL, PROMPT, options=options).response
    words = full.split()
    assert len(words) > 4, full
    stop = " " + words[3]
    cut = client.generate(MODEL, PROMPT, options={**options, "stop": [stop]})
    assert cut.response == full[: full.index(stop)]
    assert cut.done_reason == "stop" and cut.eval_count < 16


def test_raw_generate_skips_the_chat_template(client):
    templated = client.generate(MODEL, "Hello", options={**GREEDY, "num_predict": 1})
    raw = client.generate(MODEL, "Hello", raw=True, options={**GREEDY, "num_predict": 1})
    assert raw.prompt_eval_count == 1 < templated.prompt_eval_count


def test_tags_ps_and_show_describe_the_model(client, url):
    tags = client.list()
    (m,) = tags.models
    assert m.model == MODEL and m.size > 50_000_000 and len(m.digest) == 64
    assert m.details.family == "llama" and m.details.quantization_level == "Q4_1"
    assert m.details.parameter_size.endswith("M")
    (p,) = client.ps().models
    assert p.model == MODEL and p.size > 0 and p.context_length == 512 and p.size_vram == 0
    show = client.show(MODEL)
    assert "<|im_start|>" in show.template
    assert show.modelinfo["llama.block_count"] == 30
    version = httpx.get(f"{url}/api/version").json()
    assert version["version"]


def test_the_latest_tag_addresses_the_same_model(client):
    r = client.generate("smollm2:latest", PROMPT, options={**GREEDY, "num_predict": 2})
    assert r.eval_count == 2


def test_unknown_model_is_404_and_the_server_stays_up(client):
    with pytest.raises(ollama.ResponseError) as e:
        client.generate("llama9", PROMPT)
    assert e.value.status_code == 404 and "llama9" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        list(client.chat("llama9", messages=[{"role": "user", "content": "x"}], stream=True))
    assert e.value.status_code == 404
    assert client.generate(MODEL, PROMPT, options={**GREEDY, "num_predict": 1}).done


def test_logprobs_come_with_each_token(client):
    chunks = list(client.generate(MODEL, PROMPT, stream=True, logprobs=True, top_logprobs=2,
                                  options={**GREEDY, "num_predict": 6}))  # fmt: skip
    *pieces, final = chunks
    entries = [e for c in pieces for e in (c.logprobs or [])] + list(final.logprobs or [])
    assert len(entries) == final.eval_count == 6
    assert "".join(e.token for e in entries) == "".join(c.response for c in pieces)
    for e in entries:  # greedy: the chosen token is the most likely one
        assert e.logprob <= 0 and len(e.top_logprobs) == 2
        assert e.top_logprobs[0].logprob == pytest.approx(e.logprob)
        assert e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob
