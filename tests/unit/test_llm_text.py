"""Stop strings and incremental UTF-8 decoding of generated tokens."""

from __future__ import annotations

import pytest

from comps.llm.text import RepeatGuard, StopMatcher, TextStream

pytestmark = pytest.mark.unit


def feed_all(matcher: StopMatcher, pieces: list[str]) -> tuple[str, bool]:
    out = []
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        out.append(text)
        if stopped:
            return "".join(out), True
    return "".join(out) + matcher.flush(), False


def test_no_stops_passes_text_through_at_once() -> None:
    m = StopMatcher([])
    assert m.feed("Hello") == ("Hello", False)
    assert m.flush() == ""


def test_stop_inside_one_piece_cuts_before_it() -> None:
    assert feed_all(StopMatcher(["END"]), ["abc END def"]) == ("abc ", True)


def test_stop_split_across_pieces_is_never_emitted() -> None:
    m = StopMatcher(["</answer>"])
    assert m.feed("The sky is blue.</an") == ("The sky is blue.", False)  # "</an" held back
    assert m.feed("swer> more") == ("", True)


def test_held_text_is_released_when_it_stops_matching() -> None:
    m = StopMatcher(["STOP"])
    assert m.feed("ST") == ("", False)
    assert m.feed("ART") == ("START", False)


def test_earliest_of_several_stops_wins() -> None:
    assert feed_all(StopMatcher(["world", "lo"]), ["hel", "lo world"]) == ("hel", True)


def test_unfinished_prefix_is_flushed_at_the_end() -> None:
    assert feed_all(StopMatcher(["###"]), ["a #", "#"]) == ("a ##", False)


def test_empty_stop_strings_are_ignored() -> None:
    assert StopMatcher(["", ""]).feed("x") == ("x", False)


def test_multibyte_character_split_across_tokens() -> None:
    stream = TextStream([])
    data = "Grüße 東京 🙂".encode()
    out = []
    for i in range(len(data)):  # one byte per "token": the worst case
        text, _ = stream.feed(data[i : i + 1])
        out.append(text)
    out.append(stream.finish())
    assert "".join(out) == "Grüße 東京 🙂"
    assert all("\ufffd" not in t for t in out)


def test_incomplete_utf8_at_the_end_becomes_a_replacement_character() -> None:
    stream = TextStream([])
    assert stream.feed(b"ok " + "é".encode()[:1]) == ("ok ", None)
    assert stream.finish() == "\ufffd"


def test_non_ascii_stop_split_inside_a_character() -> None:
    stream = TextStream(["café"])
    pieces = [b"un ca", b"f", "é".encode()[:1], "é".encode()[1:] + b" noir"]
    texts = [stream.feed(p) for p in pieces]
    assert "".join(t for t, _ in texts) == "un "
    assert texts[-1][1] == "stop"


def stream_text(stream: TextStream, text: str, size: int = 3) -> tuple[str, str | None]:
    """Feed ``text`` a few bytes at a time, as tokens come; return (emitted text, end reason)."""
    data, out = text.encode(), []
    for i in range(0, len(data), size):
        piece, reason = stream.feed(data[i : i + size])
        out.append(piece)
        if reason:
            return "".join(out), reason
    return "".join(out) + stream.finish(), None


LOOP = "The default maxsize of lru_cache is 128. It keeps the most recent calls. The default maxsize of lru_cache"


def test_a_repeated_sentence_ends_the_text_and_is_never_emitted() -> None:
    text, reason = stream_text(TextStream([], stop_repeats=True), LOOP + " is 128. It keeps")
    assert reason == "repetition"
    assert text == "The default maxsize of lru_cache is 128. It keeps the most recent calls."


def test_the_start_of_an_earlier_sentence_is_released_when_it_turns_out_different() -> None:
    answer = "The default maxsize of lru_cache is 128. The default maxsize of the cache can be None.\n"
    assert stream_text(TextStream([], stop_repeats=True), answer) == (answer, None)


def test_held_text_is_emitted_when_the_generation_ends() -> None:
    assert stream_text(TextStream([], stop_repeats=True), LOOP) == (LOOP, None)


def test_short_sentences_and_case_or_spacing_changes() -> None:
    short = "Yes. No. Yes. No.\n- a\n- a\n"
    assert stream_text(TextStream([], stop_repeats=True), short) == (short, None)
    g = RepeatGuard()
    assert g.feed("Line one is long enough here.\n") == ("Line one is long enough here.\n", False)
    assert g.feed("LINE one  is long enough here.\n") == ("", True)


def test_repeats_are_allowed_when_the_guard_is_off() -> None:
    assert stream_text(TextStream([]), LOOP + " is 128.") == (LOOP + " is 128.", None)


def test_a_stop_string_still_ends_the_text_with_the_guard_on() -> None:
    assert stream_text(TextStream(["END"], stop_repeats=True), "One sentence here, long. More END x") == (
        "One sentence here, long. More ",
        "stop",
    )


def test_a_repeated_last_sentence_is_dropped_at_the_end() -> None:
    twice = "The blue kettle sings every morning. The blue kettle sings every morning."
    assert stream_text(TextStream([], stop_repeats=True), twice) == ("The blue kettle sings every morning.", None)
