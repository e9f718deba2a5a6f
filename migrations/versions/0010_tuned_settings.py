"""tuned_settings: the best trial of each tuning study, which the retrain trains with

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-20
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "tuned_settings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("family", sa.String(length=64), nullable=False),
        sa.Column("protocol", sa.String(length=16), nullable=False),
        sa.Column("snapshot_digest", sa.String(length=64), nullable=False),
        sa.Column("study_name", sa.String(length=255), nullable=False),
        sa.Column("params", JSON, nullable=False),
        sa.Column("metric", sa.String(length=32), nullable=False),
        sa.Column("best_valid", sa.Float(), nullable=False),
        sa.Column("best_trial", sa.Integer(), nullable=False),
        sa.Column("trials", sa.Integer(), nullable=False),
        sa.Column("pruned", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tuned_settings")),
    )
    op.create_index(
        op.f("ix_tuned_settings_family_created_at"), "tuned_settings", ["family", "created_at"]
    )


def downgrade() -> None:
    op.drop_table("tuned_settings")
