"""The chathistory service's contract: OPEA's ``/v1/chathistory/*`` bodies, our REST shape, feedback.

The owner of everything here is the user the gateway names in its identity headers, never a ``user`` in a
body (OPEA's bodies carry one; it is accepted and ignored).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from comps.sqlstore.types import Int4, NoNulJSON, StoredText, Timestamp

TITLE_MAX = 200
CONTENT_MAX = 200_000
MESSAGES_MAX = 10_000  # in one conversation of an import or a create

Role = Literal["system", "user", "assistant"]


def estimate_tokens(text: str) -> int:
    """A message's tokens in a context budget: about four characters a token (English, the small models'
    tokenizers); only a budget, never a limit. The gateway uses it too (megaservice/conversations.py)."""
    return len(text) // 4 + 1


class MessageIn(BaseModel):
    """One message to store; everything but role and content is about an assistant's answer."""

    model_config = ConfigDict(extra="ignore")

    role: Role
    content: StoredText = Field(max_length=CONTENT_MAX)
    sources: Annotated[list[dict[str, Any]], NoNulJSON] | None = Field(default=None, max_length=100)
    model: StoredText | None = Field(default=None, max_length=200)
    usage: Annotated[dict[str, Any], NoNulJSON] | None = None
    latency_ms: Int4 | None = Field(default=None, ge=0)
    cached: bool = False
    cut_short: bool = Field(default=False, description="The answer stopped early (the client went away).")
    prompt_id: str | None = Field(default=None, max_length=64)
    prompt_version: Int4 | None = Field(default=None, ge=1)
    created_at: Timestamp | None = Field(default=None, description="Kept on import; now when absent.")


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    thumbs_up: bool | None = None
    rating: int | None = Field(default=None, ge=1, le=5)
    comment: StoredText | None = Field(default=None, max_length=4000)


class MessageOut(BaseModel):
    id: str
    role: Role
    content: str
    sources: list[dict[str, Any]] | None = None
    model: str | None = None
    usage: dict[str, Any] | None = None
    latency_ms: int | None = None
    cached: bool = False
    cut_short: bool = False
    prompt_id: str | None = None
    prompt_version: int | None = None
    created_at: datetime
    feedback: FeedbackIn | None = None


class ConversationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, max_length=64, description="A UUID chosen by the client; default: new.")
    title: StoredText | None = Field(
        default=None, max_length=TITLE_MAX, description="Default: from the first question."
    )
    pinned: bool = False
    archived: bool = False
    messages: list[MessageIn] = Field(default_factory=list, max_length=MESSAGES_MAX)


class ConversationPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: StoredText | None = Field(default=None, max_length=TITLE_MAX)
    pinned: bool | None = None
    archived: bool | None = None


class ConversationOut(BaseModel):
    id: str
    title: str
    pinned: bool
    archived: bool
    created_at: datetime
    updated_at: datetime


class ConversationPage(BaseModel):
    data: list[ConversationOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last one.")


class MessagePage(BaseModel):
    data: list[MessageOut]
    next_cursor: str | None


class Append(BaseModel):
    """Messages added to a conversation; with ``create``, a conversation of that id is made if there is none."""

    model_config = ConfigDict(extra="forbid")

    messages: list[MessageIn] = Field(min_length=1, max_length=100)
    create: bool = False
    title: StoredText | None = Field(default=None, max_length=TITLE_MAX)
    turn_id: uuid.UUID | None = Field(default=None, description="The turn in flight this answers: its mark is cleared.")


class Appended(BaseModel):
    conversation_id: str
    message_ids: list[str]


class ContextTurn(BaseModel):
    role: Role
    content: str


class Context(BaseModel):
    """The newest messages of a conversation that fit the token budget, oldest first."""

    conversation_id: str
    messages: list[ContextTurn]
    dropped: int = Field(description="Earlier messages left out by the budget.")


class ExportedConversation(BaseModel):
    """One conversation as exported (and imported back: ids are new on import)."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    title: StoredText = Field(default="", max_length=TITLE_MAX)
    pinned: bool = False
    archived: bool = False
    created_at: Timestamp | None = None
    updated_at: Timestamp | None = None
    messages: list[MessageIn] = Field(default_factory=list, max_length=MESSAGES_MAX)


class Export(BaseModel):
    model_config = ConfigDict(extra="ignore")

    format: Literal["chatqna.conversations"] = "chatqna.conversations"
    version: Literal[1] = 1
    conversations: list[ExportedConversation]


class Imported(BaseModel):
    conversations: int
    messages: int
    ids: list[str]


# -- OPEA's chathistory bodies ------------------------------------------------------------------------


class OpeaData(BaseModel):
    model_config = ConfigDict(extra="ignore")

    messages: (
        Annotated[StoredText, Field(max_length=CONTENT_MAX)]
        | Annotated[list[dict[str, Any]], NoNulJSON, Field(max_length=MESSAGES_MAX)]
    )
    user: str | None = Field(default=None, description="Ignored: the owner is the signed-in user.")


class OpeaCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    data: OpeaData
    id: str | None = Field(default=None, max_length=64)
    first_query: StoredText | None = Field(default=None, max_length=10_000)


class OpeaGet(BaseModel):
    model_config = ConfigDict(extra="ignore")

    user: str | None = None
    id: str | None = Field(default=None, max_length=64)


class OpeaDelete(BaseModel):
    model_config = ConfigDict(extra="ignore")

    user: str | None = None
    id: str = Field(max_length=64)


# -- OPEA's feedback bodies ---------------------------------------------------------------------------


class OpeaFeedbackData(BaseModel):
    model_config = ConfigDict(extra="ignore")

    comment: StoredText | None = Field(default=None, max_length=4000)
    rating: int | None = Field(default=None, ge=1, le=5)
    is_thumbs_up: bool | None = None


class OpeaFeedbackCreate(BaseModel):
    """``chat_id``: the conversation; ``message_id``: the answer (default: its newest assistant message)."""

    model_config = ConfigDict(extra="ignore")

    chat_id: str = Field(max_length=64)
    message_id: str | None = Field(default=None, max_length=64)
    feedback_data: OpeaFeedbackData


class OpeaFeedbackGet(BaseModel):
    model_config = ConfigDict(extra="ignore")

    chat_id: str | None = Field(default=None, max_length=64)
    feedback_id: str | None = Field(default=None, max_length=64)
    user: str | None = None


class OpeaFeedbackDelete(BaseModel):
    model_config = ConfigDict(extra="ignore")

    feedback_id: str = Field(max_length=64)
    user: str | None = None


class FeedbackOut(FeedbackIn):
    feedback_id: str = Field(description="The message's id: one feedback per answer.")
    message_id: str
    conversation_id: str
    created_at: datetime


class FeedbackReport(FeedbackOut):
    """What an admin sees to find bad answers."""

    user_id: str
    question: str | None
    answer: str
    sources: list[dict[str, Any]] | None
    model: str | None


class FeedbackReportPage(BaseModel):
    data: list[FeedbackReport]
    next_cursor: str | None


class SessionCounts(BaseModel):
    """``GET /v1/admin/sessions/count``."""

    conversations: int
    users: int  # users with at least one conversation
    active_users: int  # users with a conversation changed within active_within_s
    active_within_s: int
