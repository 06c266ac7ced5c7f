"""generate(): streaming with timestamps, stop tokens and strings, max tokens, cancel, seeds,
Ollama-style timings, and bad requests refused with one clear line.
"""

from __future__ import annotations

import threading
import time

import pytest

from llmtop.engine.errors import RequestError
from llmtop.engine.generate import TokenEvent, generate
from llmtop.engine.sampling import SamplingParams

PROMPT = "the cat sat on the mat"


def test_stream_events_timestamps_and_timings(tiny):
    seen: list[TokenEvent] = []
    t_before = time.perf_counter_ns()
    g = generate(tiny, PROMPT, max_tokens=12, ignore_eos=True, on_token=seen.append)
    events = list(g)
    t_after = time.perf_counter_ns()
    s = g.stats
    assert events == seen and len(events) == 12
    assert [e.index for e in events] == list(range(12))
    assert [e.token_id for e in events] == list(s.token_ids)
    stamps = [e.t_ns for e in events]
    assert t_before < stamps[0] and stamps == sorted(stamps) and stamps[-1] < t_after
    assert s.done_reason == "length" and s.output_tokens == 12
    assert s.prompt_tokens == len(tiny.tokenizer.encode(PROMPT))
    assert s.load_ns > 0 and s.prefill_ns > 0 and s.decode_ns > 0
    assert s.load_ns + s.prefill_ns + s.decode_ns <= s.total_ns <= t_after - t_before
    # eval_duration runs from the end of prefill to the last token: it covers every token's stamp
    assert stamps[-1] - stamps[0] <= s.decode_ns
    assert "".join(e.text for e in events) + s.tail == s.text
    assert s.text == tiny.tokenizer.decode(s.token_ids, skip_special=True)
    assert s.ollama() == {
        "load_duration": s.load_ns,
        "prompt_eval_count": s.prompt_tokens,
        "prompt_eval_duration": s.prefill_ns,
        "eval_count": 12,
        "eval_duration": s.decode_ns,
        "total_duration": s.total_ns,
    }


def test_greedy_is_deterministic(tiny):
    a = generate(tiny, PROMPT, max_tokens=10, ignore_eos=True).run()
    b = generate(tiny, PROMPT, max_tokens=10, ignore_eos=True).run()
    assert a.token_ids == b.token_ids


def test_same_seed_same_text_other_seed_other_text(tiny):
    def run(seed: int) -> tuple[int, ...]:
        params = SamplingParams(temperature=1.5, seed=seed)
        return (
            generate(tiny, PROMPT, max_tokens=16, sampling=params, ignore_eos=True).run().token_ids
        )

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_stop_token_ends_the_output_unseen(tiny):
    greedy = generate(tiny, PROMPT, max_tokens=8, ignore_eos=True).run().token_ids
    stop_at = next(i for i in range(2, len(greedy)) if greedy[i] not in greedy[:i])
    events = []
    g = generate(
        tiny, PROMPT, max_tokens=8, stop_token_ids={greedy[stop_at]}, on_token=events.append
    )
    s = g.run()
    assert s.done_reason == "stop"
    assert s.token_ids == greedy[:stop_at] and len(events) == stop_at


def test_eos_is_a_stop_token_by_default(tiny):
    assert 2 in tiny.tokenizer.stop_ids  # <|im_end|>, the file's EOS
    assert generate(tiny, PROMPT, max_tokens=4).stop_ids == tiny.tokenizer.stop_ids
    assert generate(tiny, PROMPT, max_tokens=4, ignore_eos=True).stop_ids == frozenset()


def test_stop_string_cuts_the_text_and_is_never_streamed(smollm):
    full = generate(smollm, "The capital of France is", max_tokens=12, ignore_eos=True).run()
    assert full.text.startswith(" Paris.")
    events = []
    g = generate(
        smollm, "The capital of France is", max_tokens=12, stop=["."], on_token=events.append
    )
    s = g.run()
    assert s.done_reason == "stop" and s.text == " Paris"
    assert "".join(e.text for e in events) + s.tail == " Paris"
    assert s.output_tokens == len(events) < 12


def test_text_that_may_start_a_stop_string_is_held_back(smollm):
    """A stop string spanning two tokens: the first token's text waits until the second one
    completes the stop, and is never streamed."""
    prompt = "The capital of France is"
    texts = [e.text for e in generate(smollm, prompt, max_tokens=16, ignore_eos=True)]
    full = "".join(texts)
    k = next(
        i
        for i in range(3, len(texts) - 1)
        if len(texts[i]) >= 2
        and texts[i + 1]
        and full.find(texts[i] + texts[i + 1][0]) == len("".join(texts[:i]))
    )
    stop, before = texts[k] + texts[k + 1][0], "".join(texts[:k])
    events = []
    s = generate(smollm, prompt, max_tokens=16, stop=[stop], on_token=events.append).run()
    assert s.done_reason == "stop" and s.text == before
    assert len(events) == k + 2
    assert "".join(e.text for e in events[: k + 1]) == before  # token k's text held back
    assert "".join(e.text for e in events) + s.tail == before


def test_held_back_text_is_released_at_max_tokens(smollm):
    prompt = "The capital of France is"
    full = generate(smollm, prompt, max_tokens=6, ignore_eos=True).run()
    stop = full.text[-1] + "\x00never"  # the last character could start it, but the end comes
    events = []
    s = generate(
        smollm, prompt, max_tokens=6, ignore_eos=True, stop=[stop], on_token=events.append
    ).run()
    assert s.done_reason == "length" and s.text == full.text
    assert "".join(e.text for e in events) == full.text and s.tail == ""


def test_cancel_stops_between_steps(tiny):
    cancel = threading.Event()
    events = []

    def on_token(e: TokenEvent) -> None:
        events.append(e)
        if len(events) == 3:
            cancel.set()

    s = generate(
        tiny, PROMPT, max_tokens=50, ignore_eos=True, cancel=cancel, on_token=on_token
    ).run()
    assert s.done_reason == "cancelled" and s.output_tokens == 3 == len(events)


def test_cancelled_before_start_runs_nothing(tiny):
    cancel = threading.Event()
    cancel.set()
    s = generate(tiny, PROMPT, max_tokens=5, cancel=cancel).run()
    assert s.done_reason == "cancelled" and s.output_tokens == 0 and s.prefill_ns == 0


def test_max_tokens_is_cut_to_the_context(tiny):
    ids = tiny.tokenizer.encode("the cat sat on the mat " * 18)
    assert len(ids) < tiny.config.context_length
    room = tiny.config.context_length - len(ids)
    s = generate(tiny, ids, max_tokens=10_000, ignore_eos=True).run()
    assert s.done_reason == "length" and s.output_tokens == room


def test_chat_messages_use_the_template(tiny):
    messages = [{"role": "user", "content": "hello"}]
    g = generate(tiny, messages=messages, max_tokens=2, ignore_eos=True)
    assert g.prompt_ids == tiny.tokenizer.encode(
        "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    )
    assert g.prompt_ids[0] == 1  # <|im_start|> as one special token


def test_model_load_time_is_reported_when_the_caller_loaded_it(tiny):
    s = generate(tiny, PROMPT, max_tokens=1, model_load_ns=5_000_000_000).run()
    assert s.load_ns >= 5_000_000_000 and s.total_ns >= s.load_ns


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt": ""}, "the prompt is empty"),
        ({"prompt": [5] * 256}, "the prompt has 256 tokens; the model's context holds 256"),
        ({"prompt": PROMPT, "max_tokens": 0}, "max_tokens must be >= 1, got 0"),
        ({"prompt": [99999]}, "token ids must lie in 0..319"),
        ({}, "give either a prompt or chat messages"),
        (
            {"prompt": PROMPT, "messages": [{"role": "user", "content": "x"}]},
            "give either a prompt or chat messages",
        ),
    ],
)
def test_bad_requests_are_one_line(tiny, kwargs, message):
    with pytest.raises(RequestError) as exc:
        generate(tiny, **kwargs)
    assert str(exc.value) == message


def test_bad_sampling_params_are_one_line():
    with pytest.raises(RequestError, match="top_p must be in"):
        SamplingParams(top_p=0)
    with pytest.raises(RequestError, match="temperature must be >= 0"):
        SamplingParams(temperature=-1)


def test_prompt_too_long_for_a_given_slot(tiny):
    seq = tiny.model.new_cache(8).acquire()
    with pytest.raises(RequestError, match="its KV-cache slot has room for 8"):
        generate(tiny, [5] * 8, seq=seq)
    s = generate(tiny, [5] * 4, seq=seq, max_tokens=100, ignore_eos=True).run()
    assert s.output_tokens == 4 and seq.length == 7  # the last token is never fed back
