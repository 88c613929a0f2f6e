"""Tables of the prompt registry: named prompts (shared: no owner; personal: a user's) and their versions.

Editing a prompt adds a version; old versions stay, so a stored answer's (prompt_id, prompt_version) always
names the text it was made with.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import DateTime, ForeignKey, Index, Integer, String, Text, func, text
from sqlalchemy.orm import Mapped, mapped_column

from comps.sqlstore.db import Base


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Prompt(Base):
    __tablename__ = "prompts"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100))
    owner_id: Mapped[uuid.UUID | None] = mapped_column()  # None: shared (admins manage it)
    kind: Mapped[str] = mapped_column(String(16))  # system | rag
    version: Mapped[int] = mapped_column(Integer, default=1)  # the newest
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow, server_default=func.now())

    __table_args__ = (
        Index("uq_prompts_shared_name", "name", unique=True, postgresql_where=text("owner_id IS NULL")),
        Index(
            "uq_prompts_owner_id_name", "owner_id", "name", unique=True, postgresql_where=text("owner_id IS NOT NULL")
        ),
    )


class PromptVersion(Base):
    __tablename__ = "prompt_versions"

    prompt_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    created_by: Mapped[uuid.UUID] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow, server_default=func.now())
