"""Turning generated token bytes into text: incremental UTF-8 decoding and stop strings.

Pure logic, used by the llama.cpp engine for every sequence (and unit-tested on its own).
"""

from __future__ import annotations

import codecs


class StopMatcher:
    """Finds stop strings in streamed text, also when one is split across pieces.

    Text that could still be the start of a stop string is held back until it is known not to be;
    the stop string itself is never emitted.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Add ``text``; return (text safe to emit, whether a stop string was reached)."""
        if not self.stops:
            return text, False
        buf = self.held + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held = ""
            return buf[: min(hits)], True
        keep = 0
        for stop in self.stops:  # longest tail of buf that starts some stop string
            for k in range(min(len(stop) - 1, len(buf)), keep, -1):
                if stop.startswith(buf[-k:]):
                    keep = k
                    break
        self.held = buf[len(buf) - keep :]
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        """The held-back text, at the end of a generation that did not stop on a string."""
        held, self.held = self.held, ""
        return held


class TextStream:
    """Token bytes in, text out: UTF-8 characters split across tokens are joined, stops honoured."""

    def __init__(self, stops: list[str]) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = StopMatcher(stops)

    def feed(self, piece: bytes) -> tuple[str, bool]:
        """Add one token's bytes; return (text to emit, whether a stop string was reached)."""
        return self._stops.feed(self._utf8.decode(piece))

    def finish(self) -> str:
        """What is left at the end: incomplete UTF-8 (as U+FFFD) and held-back text."""
        tail, _ = self._stops.feed(self._utf8.decode(b"", final=True))
        return tail + self._stops.flush()
