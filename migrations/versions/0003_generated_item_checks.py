"""generated items: the sentence each was read from, and why its check rejected it

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("generated_items", sa.Column("source", sa.Text(), nullable=True))
    op.add_column("generated_items", sa.Column("rejected", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("generated_items", "rejected")
    op.drop_column("generated_items", "source")
