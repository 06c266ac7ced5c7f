"""Stop strings over streamed text: held back while undecided, cut exactly, never leaked."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmtop.engine.stop_text import StopText


def feed(stops: tuple[str, ...], pieces: list[str]) -> tuple[list[str], bool, str]:
    st = StopText(stops)
    out = [st.push(p) for p in pieces]
    return out, st.stopped, st.flush()


def test_no_stops_passes_text_through():
    assert feed((), ["a", "b\n", ""]) == (["a", "b\n", ""], False, "")


def test_stop_split_over_pieces_is_held_then_cut():
    out, stopped, tail = feed(("\n\n",), ["Hello", "\n", "\n", "more"])
    assert out == ["Hello", "", "", ""]
    assert stopped and tail == ""


def test_held_prefix_released_when_it_turns_out_not_to_be_a_stop():
    out, stopped, tail = feed(("END",), ["x E", "Nx", " y"])
    assert "".join(out) == "x ENx y" and out[0] == "x " and not stopped and tail == ""


def test_text_after_the_stop_in_the_same_piece_is_dropped():
    out, stopped, _ = feed(("###",), ["ab###cd"])
    assert out == ["ab"] and stopped


def test_earliest_of_several_stops_wins():
    out, stopped, _ = feed(("world", "lo"), ["hello world"])
    assert out == ["hel"] and stopped


def test_flush_returns_held_text_at_the_end():
    out, stopped, tail = feed(("STOP",), ["a", "ST"])
    assert out == ["a", ""] and not stopped and tail == "ST"


@pytest.mark.parametrize("cut", range(1, 12))
def test_any_split_gives_the_same_text(cut):
    text = "one two\n\nthree"
    out, stopped, tail = feed(("\n\n",), [text[:cut], text[cut:]])
    assert "".join(out) + tail == "one two" and stopped


def replay(pieces: list[str], stops: list[str]) -> tuple[str, bool]:
    """The whole text, cut before the first stop string to appear, and whether one did."""
    text = ""
    for piece in pieces:
        text += piece
        found = [i for s in stops if (i := text.find(s)) >= 0]
        if found:
            return text[: min(found)], True
    return text, False


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(st.text(alphabet="ab\nc", max_size=4), max_size=12),
    stops=st.lists(st.text(alphabet="ab\n", min_size=1, max_size=3), max_size=3),
)
def test_streams_exactly_the_text_before_the_first_stop(pieces, stops):
    s = StopText(tuple(stops))
    streamed = ""
    for piece in pieces:
        streamed += s.push(piece)
        assert not any(stop in streamed for stop in stops)  # never shown, not even in part later
        if s.stopped:
            break
    streamed += s.flush()
    assert (streamed, s.stopped) == replay(pieces, stops)
