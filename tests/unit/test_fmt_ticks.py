"""Axis ticks: short by default, more digits only where three would print two ticks alike."""

from __future__ import annotations

from llmtop.core.fmt import tick, ticks


def test_ticks_are_short_when_they_can_be():
    assert ticks([0.0, 200.0, 400.0, 1000.0, 1200.0]) == ["0", "200", "400", "1,000", "1,200"]
    assert ticks([0.5, 1.0, 1.5]) == [tick(0.5), tick(1.0), tick(1.5)] == ["0.5", "1", "1.5"]


def test_ticks_get_the_digits_that_keep_them_apart():
    # memory creeping from 4.000 to 4.006 GiB: three digits would print "4" four times
    assert ticks([4.0, 4.002, 4.004, 4.006]) == ["4", "4.002", "4.004", "4.006"]
    assert ticks([1000.0, 1000.5, 1001.0]) == ["1,000", "1,000.5", "1,001"]
    assert ticks([]) == []
