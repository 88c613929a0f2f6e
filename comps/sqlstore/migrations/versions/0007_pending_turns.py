"""pending turns: a conversation's chat turns in flight (read-your-writes across gateway replicas)

A gateway marks a turn when it begins (in the same call that reads the conversation's context) and the write of
its answer clears the mark; a context or messages read of that conversation waits while a mark of another turn
holds (LISTEN/NOTIFY on ``chat_turns``), at most until its lease ends: a gateway that dies leaves a mark that
expires. UNLOGGED: marks are short-lived leases, not data; no WAL for the two extra row writes of every turn (a
crash of PostgreSQL empties the table, which only ends the leases early).

Revision ID: 0007_pending_turns
Revises: 0006_vectorstore
"""

from alembic import op

revision = "0007_pending_turns"
down_revision = "0006_vectorstore"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE UNLOGGED TABLE pending_turns (
            turn_id uuid PRIMARY KEY,
            conversation_id uuid NOT NULL,
            user_id uuid NOT NULL,
            expires_at timestamptz NOT NULL
        )
        """
    )
    op.execute("CREATE INDEX ix_pending_turns_conversation_id ON pending_turns (conversation_id)")


def downgrade() -> None:
    op.execute("DROP TABLE pending_turns")
