"""Adapter versions remember the active version they replaced, for rollback.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 11:40:24.327596
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("adapter_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("replaced_version_id", sa.String(length=32), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_adapter_versions_replaced_version_id_adapter_versions"),
            "adapter_versions",
            ["replaced_version_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    with op.batch_alter_table("adapter_versions", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_adapter_versions_replaced_version_id_adapter_versions"),
            type_="foreignkey",
        )
        batch_op.drop_column("replaced_version_id")
