"""Uploaded training files, and the jobs that train on them (OpenAI's files and
fine-tuning API).

``training_files`` holds each upload as sent and parsed; a job names its training
and validation files by id (no foreign key: a job keeps naming a deleted file) and
the ``suffix`` of the model it makes.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 19:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "training_files",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("purpose", sa.String(length=20), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("conversation_count", sa.Integer(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column(
            "conversations",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_training_files_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_files")),
    )
    op.create_index(
        "ix_training_files_user_created", "training_files", ["user_id", "created_at"], unique=False
    )
    with op.batch_alter_table("finetune_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("training_file_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("validation_file_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("suffix", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("finetune_jobs", schema=None) as batch_op:
        batch_op.drop_column("suffix")
        batch_op.drop_column("validation_file_id")
        batch_op.drop_column("training_file_id")
    op.drop_index("ix_training_files_user_created", table_name="training_files")
    op.drop_table("training_files")
