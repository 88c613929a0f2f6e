"""forget deleted users: deleting a user deletes their conversations (messages and feedback with them) and their
personal prompts, in the same transaction

A foreign key from conversations.user_id and prompts.owner_id to users.id would do the same, but it would also
refuse every row of a user the users table does not hold: the anonymous admin of a gateway with accounts off,
and every user where chathistory or the prompt registry is given a database of its own. This trigger acts only
when a user row is deleted, which is what matters. (Shared prompts have no owner and stay; so do the versions
an admin who is deleted wrote.)

Revision ID: 0005_forget_deleted_users
Revises: 0004_usage
"""

from alembic import op

revision = "0005_forget_deleted_users"
down_revision = "0004_usage"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION forget_deleted_user() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            DELETE FROM conversations WHERE user_id = OLD.id;
            DELETE FROM prompts WHERE owner_id = OLD.id;
            RETURN OLD;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER tr_users_forget_deleted AFTER DELETE ON users "
        "FOR EACH ROW EXECUTE FUNCTION forget_deleted_user()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER tr_users_forget_deleted ON users")
    op.execute("DROP FUNCTION forget_deleted_user()")
