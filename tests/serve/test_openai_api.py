"""OpenAI's API of ``llmtop serve``, driven by the official ``openai`` Python client."""

from __future__ import annotations

import openai
import pytest

MODEL = "smollm2"
CHAT = [{"role": "user", "content": "What is AI?"}]


@pytest.fixture(scope="module")
def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_chat_streams_deltas_then_usage(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=CHAT, stream=True, max_tokens=7, temperature=0,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert content and finishes == ["length"]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.completion_tokens == 7
    assert usage.total_tokens == usage.prompt_tokens + 7 and usage.prompt_tokens > 5
    assert all(c.usage is None for c in chunks[:-1])
    whole = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=7, temperature=0)
    assert whole.choices[0].message.content == "".join(content)
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 7


def test_stream_without_include_usage_sends_no_usage(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=CHAT, stream=True,
                                                 max_tokens=2, temperature=0))  # fmt: skip
    assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)


def test_completions_stream_and_default_max_tokens(client):
    chunks = list(client.completions.create(model=MODEL, prompt="The capital of France is",
                                            stream=True, max_tokens=5, temperature=0))  # fmt: skip
    text = "".join(c.choices[0].text for c in chunks)
    assert text and chunks[-1].choices[0].finish_reason == "length"
    whole = client.completions.create(model=MODEL, prompt="Once upon a time", temperature=0)
    assert whole.usage.completion_tokens == 16  # OpenAI's default for /v1/completions
    assert whole.object == "text_completion" and whole.choices[0].text


def test_seed_reproducible_and_max_tokens_exact(client):
    def run(seed: int) -> openai.types.chat.ChatCompletion:
        return client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Tell me a story."}],
            temperature=1.5, top_p=1.0, seed=seed, max_tokens=13,
        )  # fmt: skip

    a, b, c = run(11), run(11), run(12)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.choices[0].message.content != c.choices[0].message.content
    assert a.usage.completion_tokens == 13


def test_stop_cuts_before_the_stop_string(client):
    full = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=16,
                                          temperature=0).choices[0].message.content  # fmt: skip
    stop = " " + full.split()[2]
    cut = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=16,
                                         temperature=0, stop=[stop])  # fmt: skip
    assert cut.choices[0].message.content == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_models_lists_the_served_model(client):
    (m,) = client.models.list().data
    assert m.id == MODEL and m.owned_by == "llmtop"


def test_ignore_eos_goes_on_to_max_tokens(client):
    """vLLM's and llama-server's extension, which benchmarks send: this prompt's greedy answer
    ends at once with an end-of-sequence token, unless it is ignored."""
    prompt = "Write a long story about a lighthouse keeper."
    ended = client.completions.create(model=MODEL, prompt=prompt, max_tokens=10, temperature=0)
    assert ended.usage.completion_tokens < 10 and ended.choices[0].finish_reason == "stop"
    went_on = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=10, temperature=0, extra_body={"ignore_eos": True}
    )
    assert went_on.usage.completion_tokens == 10
    assert went_on.choices[0].finish_reason == "length"


def test_errors_have_openai_shape_and_status(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-9", messages=CHAT)
    assert e.value.status_code == 404 and "gpt-9" in e.value.message
    assert e.value.body["code"] == "model_not_found"
    # max_tokens beyond the context is not an error (it stops there with finish_reason
    # "length", as in the Ollama API): tests/faults row max-tokens-over-context.
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="word " * 600, max_tokens=1)
    assert "longer than the context" in e.value.message
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model=MODEL, messages=CHAT, temperature=9)
    with pytest.raises(openai.BadRequestError, match="n=1"):
        client.chat.completions.create(model=MODEL, messages=CHAT, n=2)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model=MODEL, messages=[])
    ok = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=1)
    assert ok.usage.completion_tokens == 1


def test_chat_logprobs_streamed_and_whole(client):
    args = {"model": MODEL, "messages": CHAT, "max_tokens": 5, "temperature": 0,
            "logprobs": True, "top_logprobs": 3}  # fmt: skip
    whole = client.chat.completions.create(**args)
    content = whole.choices[0].logprobs.content
    assert len(content) == 5 and all(len(e.top_logprobs) == 3 for e in content)
    assert "".join(e.token for e in content) == whole.choices[0].message.content
    streamed = [e for c in client.chat.completions.create(**args, stream=True)
                if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]  # fmt: skip
    assert [e.token for e in streamed] == [e.token for e in content]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in content])
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        client.chat.completions.create(model=MODEL, messages=CHAT, top_logprobs=2)
