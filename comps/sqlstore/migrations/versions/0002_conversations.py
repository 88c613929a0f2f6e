"""conversations: conversations, messages, feedback

Revision ID: 0002_conversations
Revises: 0001_identity
"""

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002_conversations"
down_revision = "0001_identity"
branch_labels = None
depends_on = None


def _at(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("pinned", sa.Boolean(), nullable=False),
        sa.Column("archived", sa.Boolean(), nullable=False),
        _at("created_at"),
        _at("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_conversations"),
    )
    op.create_index("ix_conversations_user_id_updated_at_id", "conversations", ["user_id", "updated_at", "id"])
    op.create_table(
        "messages",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("conversation_id", sa.Uuid(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("sources", JSONB()),
        sa.Column("model", sa.String(200)),
        sa.Column("usage", JSONB()),
        sa.Column("latency_ms", sa.Integer()),
        sa.Column("cached", sa.Boolean(), nullable=False),
        sa.Column("cut_short", sa.Boolean(), nullable=False),
        sa.Column("prompt_id", sa.Uuid()),
        sa.Column("prompt_version", sa.Integer()),
        _at("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
        sa.UniqueConstraint("seq", name="uq_messages_seq"),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name="fk_messages_conversation_id_conversations",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_messages_conversation_id_seq", "messages", ["conversation_id", "seq"])
    op.create_table(
        "feedback",
        sa.Column("message_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("thumbs_up", sa.Boolean()),
        sa.Column("rating", sa.SmallInteger()),
        sa.Column("comment", sa.Text()),
        _at("created_at"),
        sa.PrimaryKeyConstraint("message_id", name="pk_feedback"),
        sa.ForeignKeyConstraint(
            ["message_id"], ["messages.id"], name="fk_feedback_message_id_messages", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_feedback_user_id", "feedback", ["user_id"])
    op.create_index("ix_feedback_created_at", "feedback", ["created_at"])


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_table("messages")
    op.drop_table("conversations")
