"""Text work of ChatQnA: the retrieval query of a conversation and the prompt that carries the passages.

Retrieval query (multi-turn): the latest user turn alone, except for a follow-up: when it has at most
`FOLLOW_UP_WORDS` words or contains a word that points back (it, they, this, those, he, her, ...;
see `POINTING_WORDS`), the previous user turn is put before it. "What is the capital of France?" then
"And its population?" searches "What is the capital of France?\\nAnd its population?". The whole
history still reaches the LLM; only the search uses this shorter query.

Prompt: the conversation as it came, with its last user turn replaced by `DEFAULT_TEMPLATE` (or the
request's ``chat_template``) filled with the numbered passages and the question. The passages are chosen
best first within a token budget (`within_budget`): on a CPU the time to the first token is mostly the
time to read the prompt.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from comps.llm.protocol import ChatMessage
from megaservice.protocol import Message

FOLLOW_UP_WORDS = 5
POINTING_WORDS = frozenset("it its it's itself they them their theirs this these those he him his she her hers".split())
_WORD = re.compile(r"[a-z']+")
_SLOT = re.compile(r"\{(context|question)\}")

DEFAULT_TEMPLATE = """Answer the question using only the passages below. If the passages do not contain the answer, say that you do not know.

Passages:
{context}

Question: {question}"""  # noqa: E501 - the prompt's first line is one line

NO_PASSAGES = "(no passages were found)"
CHARS_PER_TOKEN = 4.0  # English prose and docs with BPE tokenizers (SmolLM2: 4.0-4.3 on HTML documentation)
MIN_TAIL_TOKENS = 48  # a cut passage shorter than this is left out instead


@dataclass(frozen=True, slots=True)
class Passage:
    """A passage handed to the LLM, with where it came from."""

    id: str
    text: str
    source: str | None
    doc_id: str | None = None
    page: int | None = None
    score: float | None = None


def user_turns(chat: Sequence[Message]) -> list[str]:
    return [text for m in chat if m.role == "user" and (text := m.text().strip())]


def retrieval_query(chat: Sequence[Message]) -> str:
    """The text to search with: the latest user turn, preceded by the one before for a follow-up."""
    turns = user_turns(chat)
    latest = turns[-1]
    if len(turns) < 2:
        return latest
    return f"{turns[-2]}\n{latest}" if is_follow_up(latest) else latest


def is_follow_up(question: str) -> bool:
    """Whether ``question`` is searched together with the user turn before it (short, or pointing back)."""
    words = _WORD.findall(question.lower())
    return len(words) <= FOLLOW_UP_WORDS or not POINTING_WORDS.isdisjoint(words)


def estimate_tokens(text: str) -> int:
    """LLM tokens of ``text``, estimated from its length (the gateway has no tokenizer)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def within_budget(passages: Sequence[Passage], budget: int) -> list[Passage]:
    """The passages, in order, while their text fits ``budget`` tokens: the first one always (cut to
    the budget if it is longer), a later one cut to what is left when that is at least `MIN_TAIL_TOKENS`."""
    kept: list[Passage] = []
    left = budget
    for p in passages:
        cost = estimate_tokens(p.text)
        if cost <= left:
            kept.append(p)
            left -= cost
            continue
        if not kept or left >= MIN_TAIL_TOKENS:
            kept.append(replace(p, text=cut(p.text, int(left * CHARS_PER_TOKEN))))
        break
    return kept


def cut(text: str, chars: int) -> str:
    """``text`` cut to at most ``chars`` characters, at the last sentence or word end when there is one."""
    if len(text) <= chars:
        return text
    head = text[:chars]
    for end in (". ", "\n", " "):
        at = head.rfind(end)
        if at >= chars // 2:
            return head[: at + 1].rstrip()
    return head


def source_label(p: Passage) -> str:
    """``name, p. 3``: the file name (the last part of a path or URL) and the page."""
    where = (p.source or "unknown").rstrip("/")
    where = where.rsplit("/", 1)[-1] or where
    return f"{where}, p. {p.page}" if p.page is not None else where


def format_passages(passages: Sequence[Passage]) -> str:
    """``[n] name, p. 3`` then the text, one block per passage."""
    if not passages:
        return NO_PASSAGES
    return "\n\n".join(f"[{n}] {source_label(p)}\n{p.text.strip()}" for n, p in enumerate(passages, 1))


def rag_messages(chat: Sequence[Message], passages: Sequence[Passage], template: str | None) -> list[ChatMessage]:
    """The conversation with its last user turn turned into the RAG prompt."""
    last = max(i for i, m in enumerate(chat) if m.role == "user" and m.text().strip())
    slots = {"context": format_passages(passages), "question": chat[last].text().strip()}
    prompt = _SLOT.sub(lambda m: slots[m.group(1)], template or DEFAULT_TEMPLATE)  # one pass: text is not re-read
    return [ChatMessage(role=m.role, content=prompt if i == last else m.text()) for i, m in enumerate(chat)]


def plain_messages(chat: Sequence[Message]) -> list[ChatMessage]:
    """The conversation as it came (no retrieval, no passages)."""
    return [ChatMessage(role=m.role, content=m.text()) for m in chat]
