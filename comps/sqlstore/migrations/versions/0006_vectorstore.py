"""vectorstore: the pgvector store's fixed tables (collections, documents, content versions), dataprep jobs, leases

Revision ID: 0006_vectorstore
Revises: 0005_forget_deleted_users

A collection's chunks live in a table of their own, ``vs_chunks_<id>``, made when the collection is (see
`comps.vectorstore.pgvector_store`): its ``vector(dim)`` column and HNSW index depend on the collection's model.
The ``vector`` extension is created here when the server has it (the embedded server and the pgvector images
do); a server without it still migrates, and the pgvector store says at readiness what is missing.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_vectorstore"
down_revision = "0005_forget_deleted_users"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector') "
        "AND NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector') THEN "
        "CREATE EXTENSION vector; END IF; END $$"
    )
    op.execute("CREATE SEQUENCE vectorstore_doc_version")
    op.create_table(
        "vectorstore_collections",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("algorithm", sa.String(8), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_vectorstore_collections"),
        sa.UniqueConstraint("id", name="uq_vectorstore_collections_id"),
    )
    op.create_table(
        "vectorstore_documents",
        sa.Column("collection", sa.String(64), nullable=False),
        sa.Column("doc_id", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("sha256", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("chunks", sa.Integer(), nullable=False),
        sa.Column("tags", sa.Text(), nullable=False),
        sa.Column("content_type", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("chunk_size", sa.Integer(), nullable=False),
        sa.Column("chunk_overlap", sa.Integer(), nullable=False),
        sa.Column("chunk_unit", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("collection", "doc_id", name="pk_vectorstore_documents"),
        sa.ForeignKeyConstraint(
            ["collection"],
            ["vectorstore_collections.name"],
            name="fk_vectorstore_documents_collection_vectorstore_collections",
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "vectorstore_versions",
        sa.Column("collection", sa.String(64), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("collection", name="pk_vectorstore_versions"),
    )
    op.create_table(
        "dataprep_jobs",
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("finished", sa.Boolean(), nullable=False),
        sa.Column("job", sa.dialects.postgresql.JSONB(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", name="pk_dataprep_jobs"),
    )
    op.create_table(
        "dataprep_job_leases",
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", name="pk_dataprep_job_leases"),
    )
    op.create_index("ix_dataprep_jobs_created_at", "dataprep_jobs", ["created_at"])
    op.create_index("ix_dataprep_jobs_open", "dataprep_jobs", ["job_id"], postgresql_where=sa.text("NOT finished"))


def downgrade() -> None:
    op.drop_table("dataprep_job_leases")
    op.drop_table("dataprep_jobs")
    op.drop_table("vectorstore_versions")
    op.drop_table("vectorstore_documents")
    op.execute(
        "DO $$ DECLARE t record; BEGIN FOR t IN SELECT id FROM vectorstore_collections LOOP "
        "EXECUTE format('DROP TABLE IF EXISTS vs_chunks_%s', t.id); END LOOP; END $$"
    )
    op.drop_table("vectorstore_collections")
    op.execute("DROP SEQUENCE vectorstore_doc_version")
