"""usage: one row per answered request (user, API key, model, pipeline, tokens, times, cache hit, status)

Revision ID: 0004_usage
Revises: 0003_prompts
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_usage"
down_revision = "0003_prompts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("key_id", sa.Uuid()),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("pipeline", sa.String(32), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("ttft_ms", sa.Float()),
        sa.Column("total_ms", sa.Float(), nullable=False),
        sa.Column("cached", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("http_status", sa.SmallInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_usage_events"),
    )
    op.create_index("ix_usage_events_at", "usage_events", ["at"])
    op.create_index("ix_usage_events_user_id_at", "usage_events", ["user_id", "at"])


def downgrade() -> None:
    op.drop_table("usage_events")
