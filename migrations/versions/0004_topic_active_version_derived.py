"""topics.active_version dropped: a topic's active version is derived from its modules'

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("topics") as batch:
        batch.drop_column("active_version")


def downgrade() -> None:
    with op.batch_alter_table("topics") as batch:
        batch.add_column(sa.Column("active_version", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE topics SET active_version = "
        "(SELECT MAX(m.active_version) FROM modules m WHERE m.topic_id = topics.id)"
    )
