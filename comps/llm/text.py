"""Turning generated token bytes into text: incremental UTF-8 decoding, stop strings and the end of
loops (a whole sentence generated a second time).

Pure logic, used by the llama.cpp engine for every sequence (and unit-tested on its own).
"""

from __future__ import annotations

import codecs
import re
from typing import Literal

StopReason = Literal["stop", "repetition"]

MIN_REPEAT_CHARS = 20  # shorter sentences ("Yes.", "- None.") may recur in a good answer
_SENTENCE_END = re.compile(r"[.!?](?=\s)|\n")
_SPACES = re.compile(r"\s+")


def _norm(text: str) -> str:
    return _SPACES.sub(" ", text).strip().lower()


class RepeatGuard:
    """Ends a generation that says a whole sentence (>= `MIN_REPEAT_CHARS`) a second time.

    A sentence ends at ``.``, ``!`` or ``?`` followed by white space, or at a line break; sentences are
    compared with case and white space ignored. While the sentence being written could still turn out
    to be one said before (it is the start of one), its text is held back, so a repeat is never emitted.
    """

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.current = ""  # the sentence being written
        self.emitted = 0  # characters of `current` already emitted

    def feed(self, text: str) -> tuple[str, bool]:
        """Add ``text``; return (text safe to emit, whether a sentence was repeated)."""
        out: list[str] = []
        buf = self.current + text
        start = 0
        for end in _SENTENCE_END.finditer(buf):
            sentence = buf[start : end.end()]
            key = _norm(sentence)
            if len(key) >= MIN_REPEAT_CHARS:
                if key in self.seen:
                    self.current, self.emitted = "", 0
                    return "".join(out), True
                self.seen.add(key)
            out.append(sentence[self.emitted :])
            start, self.emitted = end.end(), 0
        self.current = buf[start:]
        key = _norm(self.current)
        if not (key and any(seen.startswith(key) for seen in self.seen)):
            out.append(self.current[self.emitted :])
            self.emitted = len(self.current)
        return "".join(out), False

    def flush(self) -> str:
        """The held-back text, at the end of a generation that did not end on a repeat; nothing when it is a
        last sentence said before (ended by the end of the text rather than by white space)."""
        tail = self.current[self.emitted :]
        key = _norm(self.current)
        self.current, self.emitted = "", 0
        return "" if len(key) >= MIN_REPEAT_CHARS and key in self.seen else tail


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
    """Token bytes in, text out: UTF-8 characters split across tokens are joined, stops honoured,
    and (``stop_repeats``) a repeated sentence ends the text."""

    def __init__(self, stops: list[str], *, stop_repeats: bool = False) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = StopMatcher(stops)
        self._repeats = RepeatGuard() if stop_repeats else None

    def feed(self, piece: bytes) -> tuple[str, StopReason | None]:
        """Add one token's bytes; return (text to emit, why the text ends here or None)."""
        text, stopped = self._stops.feed(self._utf8.decode(piece))
        return self._guard(text, "stop" if stopped else None)

    def finish(self) -> str:
        """What is left at the end: incomplete UTF-8 (as U+FFFD) and held-back text."""
        tail, _ = self._stops.feed(self._utf8.decode(b"", final=True))
        text, reason = self._guard(tail + self._stops.flush(), None)
        if reason is None and self._repeats is not None:
            text += self._repeats.flush()
        return text

    def _guard(self, text: str, reason: StopReason | None) -> tuple[str, StopReason | None]:
        if self._repeats is None:
            return text, reason
        text, repeated = self._repeats.feed(text)
        if repeated:
            return text, "repetition"
        if reason is not None:  # a stop string ends the text: what was held back is not a repeat
            text += self._repeats.flush()
        return text, reason
