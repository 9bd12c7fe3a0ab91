"""Who decided a version's fate, and a user's own limits of the fine-tune gate.

``promoted_by`` / ``retired_by`` record the gate, the user or an admin: a
promotion by a person of a version the gate held back is an override, and the
dashboard shows it. ``finetune_max_generic_rise`` and ``finetune_max_probe_loss``
are an admin's per-user settings of the gate's trade-offs (None: the service's).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 02:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("adapter_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("promoted_by", sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column("retired_by", sa.String(length=20), nullable=True))
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("finetune_max_generic_rise", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("finetune_max_probe_loss", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("finetune_max_probe_loss")
        batch_op.drop_column("finetune_max_generic_rise")
    with op.batch_alter_table("adapter_versions", schema=None) as batch_op:
        batch_op.drop_column("retired_by")
        batch_op.drop_column("promoted_by")
