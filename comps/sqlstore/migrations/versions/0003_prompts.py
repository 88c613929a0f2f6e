"""prompts: named, versioned prompt templates (shared and personal)

Revision ID: 0003_prompts
Revises: 0002_conversations
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0003_prompts"
down_revision = "0002_conversations"
branch_labels = None
depends_on = None


def _at(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "prompts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("owner_id", sa.Uuid()),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        _at("created_at"),
        _at("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_prompts"),
    )
    op.create_index(
        "uq_prompts_shared_name", "prompts", ["name"], unique=True, postgresql_where=sa.text("owner_id IS NULL")
    )
    op.create_index(
        "uq_prompts_owner_id_name",
        "prompts",
        ["owner_id", "name"],
        unique=True,
        postgresql_where=sa.text("owner_id IS NOT NULL"),
    )
    op.create_table(
        "prompt_versions",
        sa.Column("prompt_id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=False),
        _at("created_at"),
        sa.PrimaryKeyConstraint("prompt_id", "version", name="pk_prompt_versions"),
        sa.ForeignKeyConstraint(
            ["prompt_id"], ["prompts.id"], name="fk_prompt_versions_prompt_id_prompts", ondelete="CASCADE"
        ),
    )


def downgrade() -> None:
    op.drop_table("prompt_versions")
    op.drop_table("prompts")
