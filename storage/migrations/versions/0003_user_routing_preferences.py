"""Users' routing preferences: cost weight (lambda), price ceiling, latency objective.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 15:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("route_cost_weight", "route_max_price", "route_latency_slo_seconds")


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        for name in COLUMNS:
            batch_op.add_column(sa.Column(name, sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        for name in reversed(COLUMNS):
            batch_op.drop_column(name)
