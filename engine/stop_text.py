"""Streamed text with stop strings: emit what is safe, hold back what could start a stop string.

A stop string can be split over several tokens ("\\n" then "\\n"), so text that could be the
beginning of one is held until the next token settles it; when a stop string appears, the text
before it is emitted and nothing after it. One implementation for the server's scheduler and
the in-process ``generate`` (engine/generate.py).
"""

from __future__ import annotations

from collections.abc import Callable


class StopText:
    """Feed decoded text piece by piece; get back the text that may be sent now."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """The part of ``held + text`` that can be sent; sets ``stopped`` on a stop string."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        full = self._held + text
        cut = min((i for s in self.stops if (i := full.find(s)) >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return full[:cut]
        keep = self._longest_stop_prefix_suffix(full)
        self._held = full[len(full) - keep :] if keep else ""
        return full[: len(full) - keep]

    def flush(self) -> str:
        """At the end (no stop string came): the held-back text after all."""
        out, self._held = self._held, ""
        return "" if self.stopped else out

    def _longest_stop_prefix_suffix(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best


TokenDecoder = Callable[[int], str]
"""One sequence's incremental detokenizer: token id in, newly complete text out ("" while a
character is split across tokens)."""
