"""generated training data, modules

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "generated_items",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("topic_id", sa.String(length=32), nullable=False),
        sa.Column("document_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=True),
        sa.Column("generator", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("question", sa.Text(), nullable=True),
        sa.Column("answer", sa.Text(), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("held_out", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["topic_id"], ["topics.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["document_id"], ["documents.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_generated_items_topic_id", "generated_items", ["topic_id"])
    op.create_index("ix_generated_items_document_id", "generated_items", ["document_id"])
    op.create_table(
        "modules",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("topic_id", sa.String(length=32), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("active_version", sa.Integer(), nullable=True),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.Column("capacity_tokens", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["topic_id"], ["topics.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("topic_id", "number"),
    )
    op.create_index("ix_modules_topic_id", "modules", ["topic_id"])
    with op.batch_alter_table("documents") as batch_op:
        batch_op.add_column(sa.Column("module", sa.Integer(), nullable=True))
    with op.batch_alter_table("adapter_versions") as batch_op:
        batch_op.add_column(sa.Column("module", sa.Integer(), nullable=False, server_default="0"))
    # Every topic so far is one module: module 0 serves the topic's active version.
    op.execute(
        "INSERT INTO modules (topic_id, number, active_version, tokens, items, capacity_tokens) "
        "SELECT t.id, 0, t.active_version, 0, "
        "(SELECT count(*) FROM documents d WHERE d.topic_id = t.id), 0 "
        "FROM topics t WHERE EXISTS (SELECT 1 FROM adapter_versions v WHERE v.topic_id = t.id)"
    )
    op.execute("UPDATE documents SET module = 0 WHERE topic_id IN (SELECT topic_id FROM modules)")


def downgrade() -> None:
    with op.batch_alter_table("adapter_versions") as batch_op:
        batch_op.drop_column("module")
    with op.batch_alter_table("documents") as batch_op:
        batch_op.drop_column("module")
    op.drop_table("modules")
    op.drop_table("generated_items")
