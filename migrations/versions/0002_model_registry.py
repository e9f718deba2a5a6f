"""model registry: versions, aliases and alias moves

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[object]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "model_versions",
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("family", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("params", _json(), nullable=True),
        sa.Column("train_config", _json(), nullable=True),
        sa.Column("training", _json(), nullable=True),
        sa.Column("metrics", _json(), nullable=True),
        sa.Column("protocol", sa.String(length=16), nullable=True),
        sa.Column("evaluated_users", sa.Integer(), nullable=True),
        sa.Column("eval_digest", sa.String(length=64), nullable=True),
        sa.Column("snapshot", _json(), nullable=True),
        sa.Column("snapshot_digest", sa.String(length=64), nullable=True),
        sa.Column("item_map_digest", sa.String(length=64), nullable=True),
        sa.Column("artifact_path", sa.Text(), nullable=True),
        sa.Column("onnx_sha256", sa.String(length=64), nullable=True),
        sa.Column("opset", sa.Integer(), nullable=True),
        sa.Column("parity", _json(), nullable=True),
        sa.Column("gate", _json(), nullable=True),
        sa.Column("flow_run_id", sa.String(length=64), nullable=True),
        sa.Column("code_version", sa.String(length=64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_model_versions")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_model_versions_status"), "model_versions", ["status"])
    op.create_index(
        op.f("ix_model_versions_snapshot_digest"), "model_versions", ["snapshot_digest"]
    )
    op.create_table(
        "model_aliases",
        sa.Column("alias", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["version"],
            ["model_versions.version"],
            name=op.f("fk_model_aliases_version_model_versions"),
        ),
        sa.PrimaryKeyConstraint("alias", name=op.f("pk_model_aliases")),
    )
    op.create_table(
        "alias_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("alias", sa.String(length=32), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("from_version", sa.Integer(), nullable=True),
        sa.Column("to_version", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("details", _json(), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["from_version"],
            ["model_versions.version"],
            name=op.f("fk_alias_events_from_version_model_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["to_version"],
            ["model_versions.version"],
            name=op.f("fk_alias_events_to_version_model_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alias_events")),
    )
    op.create_index(op.f("ix_alias_events_alias_id"), "alias_events", ["alias", "id"])


def downgrade() -> None:
    op.drop_table("alias_events")
    op.drop_table("model_aliases")
    op.drop_table("model_versions")
