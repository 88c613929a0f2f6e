"""The condense-question step's text work (the LLM call is tested through the gateway)."""

from __future__ import annotations

import pytest

from megaservice.condense import clean, condense_messages
from megaservice.protocol import Message

pytestmark = pytest.mark.unit


def chat(*turns: tuple[str, str]) -> list[Message]:
    return [Message(role=role, content=text) for role, text in turns]


def test_a_first_question_needs_no_rewrite() -> None:
    assert condense_messages(chat(("user", "What is Quellmoor?"))) is None
    assert condense_messages(chat(("system", "Be brief."), ("user", "What is Quellmoor?"))) is None


def test_the_rewrite_sees_the_recent_turns_and_the_follow_up() -> None:
    turns = [("user", f"q{n}") if n % 2 == 0 else ("assistant", f"a{n}") for n in range(10)] + [("user", "And it?")]
    content = condense_messages(chat(*turns))[0].content  # type: ignore[index]
    assert "Follow-up question: And it?" in content
    assert "user: q8" in content and "assistant: a7" in content and "q4" not in content


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Who leads Quellmoor?", "Who leads Quellmoor?"),
        ('  "Who leads Quellmoor?"\nmore text', "Who leads Quellmoor?"),
        ("Standalone question: Who leads Quellmoor?", "Who leads Quellmoor?"),
        ("\n\n", ""),
    ],
)
def test_clean_keeps_the_first_line_without_labels_or_quotes(raw: str, expected: str) -> None:
    assert clean(raw) == expected
