"""drift_triggers: the retrains the drift monitor started, which its cool-down reads

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "drift_triggers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("triggered_at", sa.BigInteger(), nullable=False),
        sa.Column("champion_version", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("signals", JSON, nullable=False),
        sa.Column("deployment", sa.String(length=255), nullable=True),
        sa.Column("monitor_run_id", sa.String(length=64), nullable=True),
        sa.Column("retrain_run_id", sa.String(length=64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drift_triggers")),
    )
    op.create_index(op.f("ix_drift_triggers_triggered_at"), "drift_triggers", ["triggered_at"])


def downgrade() -> None:
    op.drop_table("drift_triggers")
