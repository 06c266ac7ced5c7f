"""Scenario files: the built-ins as the seeds describe them, and one-line errors with line numbers."""

from __future__ import annotations

import tomllib

import pytest

from llmtop.core.errors import UsageError
from llmtop.scenarios.loader import builtin_names, builtin_text, load_scenario, parse_scenario
from llmtop.scenarios.model import Overrides, apply_overrides, single_step
from llmtop.scenarios.toml_lines import key_lines


def test_the_builtins_follow_the_seed_benchmarks():
    assert builtin_names() == [
        "basic", "prompt-length", "temperature", "concurrency", "soak", "rate-sweep"
    ]  # fmt: skip
    basic = load_scenario("basic")
    assert [s.name for s in basic.steps] == ["short", "medium", "long"]
    assert [s.prompts[0].text[:25] for s in basic.steps] == [
        "What is AI?", "Explain the concept of ma", "Describe the architecture"
    ]  # fmt: skip
    assert {(s.concurrency, s.arrival) for s in basic.steps} == {(1, "closed")}
    assert basic.warmup is None and basic.warmup_requests == 1  # one per worker
    lengths = load_scenario("prompt-length")
    chars = [len(s.prompts[0].text) for s in lengths.steps]
    assert [s.name for s in lengths.steps] == ["tiny", "short", "medium", "long", "very-long"]
    assert chars == sorted(chars) and chars[-1] > 5000
    assert [s.prompts[0].tokens for s in lengths.steps][3:] == [500, 1500]
    assert all(s.unique_prompts for s in lengths.steps)
    temps = load_scenario("temperature")
    assert [s.temperature for s in temps.steps] == [0.0, 0.7, 1.5]
    assert len({s.prompts for s in temps.steps}) == 1
    conc = load_scenario("concurrency")
    assert [s.concurrency for s in conc.steps] == [1, 2, 4, 8]
    assert conc.warmup_requests == 8  # every slot of the busiest step is warm
    soak = load_scenario("soak")
    assert soak.steps[0].duration_s == 30 and soak.steps[0].requests is None
    assert soak.sample_hz == 4
    sweep = load_scenario("rate-sweep")
    rates = [s.rate for s in sweep.steps]
    assert rates == sorted(rates) and len(rates) >= 4
    assert {s.arrival for s in sweep.steps} == {"poisson"}
    assert {s.seed for s in sweep.steps} == {42} and sweep.stop_below_goodput == 0.9
    assert sweep.slo.ttft_ms == 500 and sweep.slo.tpot_ms == 50


def test_builtin_text_is_valid_toml_that_users_can_copy():
    for name in builtin_names():
        assert tomllib.loads(builtin_text(name))["name"] == name


def test_a_file_loads_by_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('name = "mine"\n[[steps]]\nname = "only"\nrequests = 2\n')
    s = load_scenario(str(path))
    assert s.name == "mine" and s.source == str(path)
    assert s.steps[0].requests == 2 and s.steps[0].prompts[0].text == "What is AI?"


GOOD_HEAD = 'name = "x"\n'


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (GOOD_HEAD + "[[steps]]\nname = 'a'\nconcurency = 2\n",
         [":4:", "steps[1].concurency", "unknown key", "did you mean 'concurrency'"]),
        (GOOD_HEAD + "colour = 1\n[[steps]]\nname = 'a'\n", [":2:", "colour", "unknown key"]),
        (GOOD_HEAD + "[[steps]]\nname = 'a'\n[[steps]]\nname = 'b'\nrate = -1\n",
         [":6:", "steps[2].rate", "must be > 0", "-1"]),
        (GOOD_HEAD + "[[steps]]\nname = 'a'\nrequests = '10'\n",
         [":4:", "steps[1].requests", "must be an integer", "'10'"]),
        (GOOD_HEAD + "[[steps]]\nname = 'a'\nrequests = true\n", [":4:", "must be an integer"]),
        (GOOD_HEAD + "[defaults]\ntemperature = 3.5\n[[steps]]\nname = 'a'\n",
         [":3:", "defaults.temperature", "must be 0..2"]),
        (GOOD_HEAD + "[[steps]]\nname = 'a'\nrate = 2\narrival = 'closed'\n",
         [":5:", "steps[1].arrival", "needs arrival"]),
        (GOOD_HEAD + "[[steps]]\nname = 'a'\narrival = 'poisson'\n", [":4:", "needs a rate"]),
        (GOOD_HEAD + "[[steps]]\nname = 'a'\n[[steps]]\nname = 'a'\n",
         [":5:", "steps[2].name", "used twice"]),
        (GOOD_HEAD + "[prompts]\nshort = 'hi'\n[[steps]]\nname = 'a'\nprompts = [\n  'short',\n  'nope',\n]\n",
         [":8:", "steps[1].prompts[2]", "no prompt labelled 'nope' in [prompts] (short)"]),
        (GOOD_HEAD + "[prompts]\nbig = { tokens = 0 }\n[[steps]]\nname = 'a'\n",
         [":3:", "prompts.big.tokens", "must be 1..131072"]),
        (GOOD_HEAD + "[prompts]\nbig = { text = 'a', tokens = 3 }\n[[steps]]\nname = 'a'\n",
         [":3:", "exactly one of text and tokens"]),
        (GOOD_HEAD + "[[steps]]\nrequests = 1\n", [":2:", "steps[1]", "needs a name"]),
        ("[[steps]]\nname = 'a'\n", ["needs a name"]),
        (GOOD_HEAD, ["at least one [[steps]]"]),
        (GOOD_HEAD + "stop_below_goodput = 0.9\n[[steps]]\nname = 'a'\n",
         [":2:", "needs objectives in [slo]"]),
        (GOOD_HEAD + "[slo]\nttft = 500\n[[steps]]\nname = 'a'\n",
         [":3:", "slo.ttft", "did you mean 'ttft_ms'"]),
        (GOOD_HEAD + "[[steps]]\nname = 'a'\nrequests = 3\nrequests = 4\n",
         ["not valid TOML", "line 5"]),
        (GOOD_HEAD + 'steps = "oops"\n', [":2:", "steps", "array of tables"]),
    ],
)  # fmt: skip
def test_errors_name_the_file_line_and_key(text, fragments):
    with pytest.raises(UsageError) as e:
        parse_scenario(text, "bad.toml")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("scenario bad.toml")
    for f in fragments:
        assert f in msg, (f, msg)


def test_a_scenario_file_is_data_never_code():
    text = (
        GOOD_HEAD
        + "[prompts]\n"
        + "a = \"{__import__('os').system('touch /tmp/pwned')} {{ 7 * 7 }} ${HOME} %(x)s\"\n"
        + "[[steps]]\nname = 's'\n"
    )
    s = parse_scenario(text, "x.toml")
    assert s.steps[0].prompts[0].text == (
        "{__import__('os').system('touch /tmp/pwned')} {{ 7 * 7 }} ${HOME} %(x)s"
    )


def test_missing_and_unreadable_files_are_one_line(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_scenario(str(tmp_path / "none.toml"))
    bad = tmp_path / "bin.toml"
    bad.write_bytes(b"\xff\xfe\x00name")
    with pytest.raises(UsageError, match="not UTF-8"):
        load_scenario(str(bad))
    with pytest.raises(UsageError, match="built-ins are basic"):
        load_scenario("basci")


def test_key_lines_finds_keys_in_every_toml_shape():
    text = (
        "# a comment with key = 1 in it\n"  # 1
        'name = "x"  # trailing\n'  # 2
        'description = """ [[not a table]]\n'  # 3
        "still = the string\n"  # 4
        '"""\n'  # 5
        "[prompts]\n"  # 6
        "a.b = 1\n"  # 7
        "[[steps]]\n"  # 8
        "prompts = [\n"  # 9
        "  'x', # one\n"  # 10
        "  { label = 'y', text = 'a]}b' },\n"  # 11
        "]\n"  # 12
        "[[steps]]\n"  # 13
        "'quoted key' = 2\n"  # 14
    )
    tomllib.loads(text)
    lines = key_lines(text)
    assert lines[("name",)] == 2 and lines[("description",)] == 3
    assert ("still",) not in lines
    assert lines[("prompts", "a")] == 7 and lines[("prompts", "a", "b")] == 7
    assert lines[("steps", 0)] == 8 and lines[("steps", 0, "prompts", 0)] == 10
    assert lines[("steps", 0, "prompts", 1, "text")] == 11
    assert lines[("steps", 1)] == 13 and lines[("steps", 1, "quoted key")] == 14


def test_overrides_apply_to_every_step():
    sweep = load_scenario("rate-sweep")
    more = apply_overrides(sweep, Overrides(requests=5, max_tokens=16, temperature=0.0))
    assert {(s.requests, s.duration_s, s.max_tokens, s.temperature) for s in more.steps} == {
        (5, None, 16, 0.0)
    }
    assert [s.rate for s in more.steps] == [s.rate for s in sweep.steps]
    soak = apply_overrides(load_scenario("soak"), Overrides(duration_s=5, rate=3.0))
    step = soak.steps[0]
    assert (step.duration_s, step.requests, step.rate, step.arrival) == (5, None, 3.0, "poisson")
    assert step.concurrency is None  # workers do not become a cap by accident
    closed = apply_overrides(sweep, Overrides(arrival="closed", concurrency=3))
    assert {(s.arrival, s.rate, s.concurrency) for s in closed.steps} == {("closed", None, 3)}
    custom = apply_overrides(load_scenario("basic"), Overrides(prompt="Hello", warmup=0))
    assert {s.prompts[0].label for s in custom.steps} == {"custom"} and custom.warmup == 0
    with pytest.raises(ValueError, match="needs --rate"):
        apply_overrides(load_scenario("basic"), Overrides(arrival="poisson"))


def test_without_a_scenario_one_step_of_the_prompt():
    s = single_step(Overrides())
    step = s.steps[0]
    assert (step.requests, step.concurrency, step.prompts[0].text) == (10, 1, "What is AI?")
    s = single_step(Overrides(prompt="Hi", duration_s=3, rate=2.0))
    step = s.steps[0]
    assert (step.requests, step.duration_s, step.arrival, step.prompts[0].text) == (
        None, 3, "poisson", "Hi"
    )  # fmt: skip
