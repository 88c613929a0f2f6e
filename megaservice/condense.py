"""The condense-question step: one short LLM call that rewrites a follow-up into a standalone question for the
search (as NVIDIA's RAG blueprint does), instead of the word-list heuristic of `megaservice.prompt`.

Only the search uses the rewrite; the LLM still answers the conversation as it came. A rewrite that fails or
comes back empty falls back to the heuristic's query. `benchmarks/eval_multiturn.py` measures both.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from comps.core.errors import ServiceError
from comps.core.http import HttpClient
from comps.llm.protocol import ChatCompletionRequest, ChatMessage
from megaservice.graph import Graph
from megaservice.protocol import Message

log = logging.getLogger("megaservice.condense")

CONDENSE_PROMPT = """Rewrite the follow-up question so that it can be understood without the conversation: \
replace words like "it", "they" or "there" with what they refer to. Answer with the rewritten question only.

Conversation:
{history}

Follow-up question: {question}
Standalone question:"""

HISTORY_TURNS = 4  # the messages before the question that the rewrite sees
TURN_CHARS = 500  # of each


def condense_messages(chat: Sequence[Message]) -> list[ChatMessage] | None:
    """The rewrite request's messages, or None when there is nothing to rewrite (a first question)."""
    turns = [(m.role, text) for m in chat if m.role in ("user", "assistant") and (text := m.text().strip())]
    if not turns or turns[-1][0] != "user" or not any(role == "user" for role, _ in turns[:-1]):
        return None
    history = "\n".join(f"{role}: {text[:TURN_CHARS]}" for role, text in turns[-1 - HISTORY_TURNS : -1])
    return [ChatMessage(role="user", content=CONDENSE_PROMPT.format(history=history, question=turns[-1][1]))]


def clean(text: str) -> str:
    """The first line of the model's answer, without quotes or a leading label."""
    line = next((ln.strip() for ln in text.strip().splitlines() if ln.strip()), "")
    for label in ("standalone question:", "question:"):
        if line.lower().startswith(label):
            line = line[len(label) :].strip()
    return line.strip("\"'` ")


class Condenser:
    def __init__(self, llm: Graph, *, max_tokens: int = 48) -> None:
        self.llm = llm  # the llm-only graph: its terminal is the LLM service
        self.max_tokens = max_tokens

    async def standalone(self, chat: Sequence[Message], http: HttpClient) -> str | None:
        messages = condense_messages(chat)
        if messages is None:
            return None
        request = ChatCompletionRequest(messages=messages, max_tokens=self.max_tokens, temperature=0.0)
        try:
            completion = await self.llm.call_terminal(http, request)
        except ServiceError as exc:
            log.warning("condense-question step failed (%s); searching with the heuristic's query", exc.message)
            return None
        return clean(completion.choices[0].message.content or "") or None
