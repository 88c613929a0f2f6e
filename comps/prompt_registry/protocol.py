"""The prompt registry's contract: our REST shape ``/v1/prompts`` and OPEA's ``/v1/prompt/create|get|delete``.

A prompt is ``system`` (a system message put before the conversation) or ``rag`` (the template of the last turn,
with ``{context}`` and ``{question}``). Shared prompts have no owner and are managed by admins; personal ones
belong to their user. A name is unique among the shared prompts and among each user's own; a user's own prompt
of a name comes before the shared one of that name.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from comps.sqlstore.types import StoredText

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}$"
TEXT_MAX = 20_000

Kind = Literal["system", "rag"]


def check_template(kind: str, text: str) -> None:
    if kind == "rag" and ("{context}" not in text or "{question}" not in text):
        raise PydanticCustomError("template_slots", "a rag template must contain both {context} and {question}")


class PromptCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    kind: Kind = "rag"
    text: StoredText = Field(min_length=1, max_length=TEXT_MAX)
    shared: bool = Field(default=False, description="Shared with every user (admins only).")

    @model_validator(mode="after")
    def _slots(self) -> PromptCreate:
        check_template(self.kind, self.text)
        return self


class PromptEdit(BaseModel):
    """A new version of the text (the old one stays)."""

    model_config = ConfigDict(extra="forbid")

    text: StoredText = Field(min_length=1, max_length=TEXT_MAX)


class PromptOut(BaseModel):
    id: str
    name: str
    kind: Kind
    shared: bool
    version: int = Field(description="The version of `text` (the newest unless asked for another).")
    text: str
    created_at: datetime
    updated_at: datetime


class PromptVersionOut(BaseModel):
    version: int
    text: str
    created_at: datetime


# -- OPEA's bodies --------------------------------------------------------------------------------------


class OpeaPromptCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt_text: StoredText = Field(min_length=1, max_length=TEXT_MAX)
    user: str | None = Field(default=None, description="Ignored: the owner is the signed-in user.")


class OpeaPromptId(BaseModel):
    model_config = ConfigDict(extra="ignore")

    user: str | None = None
    prompt_id: str | None = Field(default=None, max_length=64)
    prompt_text: StoredText | None = Field(default=None, max_length=1000, description="Search in the texts.")


class OpeaPromptDelete(BaseModel):
    model_config = ConfigDict(extra="ignore")

    user: str | None = None
    prompt_id: str = Field(max_length=64)
