"""What the pages show, as plain data: a chat's turns, the request an answer is asked with, how a source, a
job's progress and a model's status read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FINISHED = ("succeeded", "failed", "skipped")


@dataclass
class Turn:
    role: str  # "user" | "assistant"
    content: str
    sources: list[dict[str, Any]] = field(default_factory=list)
    message_id: str | None = None  # known for stored answers; a fresh one is the conversation's newest
    feedback: bool | None = None  # thumbs up (True) / down (False)
    stopped: bool = False  # cut short: the user stopped it
    error: str | None = None


@dataclass
class Chat:
    """One conversation on screen; ``conversation_id`` is None until the first answer starts it."""

    conversation_id: str | None = None
    turns: list[Turn] = field(default_factory=list)

    def start(self, question: str) -> None:
        self.turns.append(Turn("user", question))


@dataclass
class Options:
    """The choices of the chat page (pickers and the "advanced" knobs)."""

    model: str | None = None
    prompt: str | None = None
    collection: str | None = None  # None: the shared collections and the user's own
    k: int = 4
    top_n: int = 3
    search_type: str = "similarity"
    rerank: bool = True
    retrieval: bool = True  # False: the LLM alone, no documents
    temperature: float | None = None
    max_tokens: int | None = None


def chat_request(chat: Chat, question: str, options: Options) -> dict[str, Any]:
    """The body of `/v1/chatqna` for the next question: a kept conversation sends only the new turn."""
    body: dict[str, Any] = {"messages": question, "k": options.k, "top_n": options.top_n}
    if chat.conversation_id:
        body["conversation_id"] = chat.conversation_id
    else:
        body["store"] = True
    body["search_type"] = options.search_type
    if not options.rerank:
        body["rerank"] = False
    if not options.retrieval:
        body["retrieval"] = False
    for name in ("model", "prompt", "collection", "temperature", "max_tokens"):
        value = getattr(options, name)
        if value is not None and value != "":
            body[name] = value
    return body


def chat_from_messages(conversation_id: str, messages: list[dict[str, Any]]) -> Chat:
    """A stored conversation as turns (oldest first); system messages are not shown."""
    turns = []
    for m in messages:
        if m.get("role") not in ("user", "assistant"):
            continue
        feedback = m.get("feedback") or {}
        turns.append(
            Turn(
                m["role"],
                m.get("content") or "",
                sources=list(m.get("sources") or []),
                message_id=m.get("id"),
                feedback=feedback.get("thumbs_up"),
                stopped=bool(m.get("cut_short")),
            )
        )
    return Chat(conversation_id, turns)


def source_label(source: dict[str, Any]) -> str:
    """ "handbook.pdf, p. 3" (a source's document and page)."""
    name = source.get("source") or source.get("doc_id") or source.get("id") or "passage"
    page = source.get("page")
    return f"{name}, p. {page}" if page is not None else str(name)


def job_progress(job: dict[str, Any]) -> tuple[float, str]:
    """A job's progress bar: the fraction done and its label (chunks embedded / total, or why it failed)."""
    status = job.get("status", "queued")
    total, done = int(job.get("chunks_total") or 0), int(job.get("chunks_embedded") or 0)
    name = job.get("source", "")
    if status == "succeeded":
        return 1.0, f"{name}: done ({total} chunks)"
    if status == "skipped":
        return 1.0, f"{name}: unchanged, skipped"
    if status == "failed":
        return 1.0, f"{name}: failed: {job.get('error') or 'no reason given'}"
    if total:
        return min(done / total, 0.99), f"{name}: {done}/{total} chunks embedded"
    return 0.0, f"{name}: {status}"


def model_label(model: dict[str, Any]) -> str:
    """A model and its status, e.g. "smol (ready)", "smol (unreachable)"."""
    status = model.get("status") or "unknown"
    mark = "status unknown" if status == "unknown" else status
    return f"{model['id']} ({mark})"


def conversation_file_name(title: str, conversation_id: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in title.strip())[:40].strip("-")
    return f"{safe or 'conversation'}-{conversation_id[:8]}.json"
