"""impressions (what the API showed), the recommendation an event named, attributions

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "impressions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("shown_at", sa.BigInteger(), nullable=False),
        sa.Column("endpoint", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=True),
        sa.Column("session_id", sa.String(length=255), nullable=True),
        sa.Column("item_id", sa.String(length=255), nullable=True),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=True),
        sa.Column("arm", sa.String(length=16), nullable=True),
        sa.Column("fallback", sa.String(length=16), nullable=True),
        sa.Column("items", JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_impressions")),
    )
    op.create_index(op.f("ix_impressions_user_id_shown_at"), "impressions", ["user_id", "shown_at"])
    op.create_index(op.f("ix_impressions_shown_at"), "impressions", ["shown_at"])
    op.create_table(
        "event_recommendations",
        sa.Column("interaction_id", KEY, autoincrement=False, nullable=False),
        sa.Column("recommendation_id", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("interaction_id", name=op.f("pk_event_recommendations")),
    )
    op.create_index(
        op.f("ix_event_recommendations_recommendation_id"),
        "event_recommendations",
        ["recommendation_id"],
    )
    op.create_table(
        "attributions",
        sa.Column("interaction_id", KEY, autoincrement=False, nullable=False),
        sa.Column("impression_id", sa.String(length=32), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("event_type", sa.String(length=32), nullable=False),
        sa.Column("occurred_at", sa.BigInteger(), nullable=False),
        sa.Column("named", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("interaction_id", name=op.f("pk_attributions")),
    )
    op.create_index(op.f("ix_attributions_impression_id"), "attributions", ["impression_id"])
    op.create_index(op.f("ix_attributions_occurred_at"), "attributions", ["occurred_at"])


def downgrade() -> None:
    op.drop_table("attributions")
    op.drop_table("event_recommendations")
    op.drop_table("impressions")
