"""item availability and origin, and the catalogue's revision counter

Items get ``available`` (false takes an item out of every recommendation) and ``source``
(the database source that last described it). Availability that source syncs kept as the
attribute ``available`` moves into the column. ``catalogue_state`` holds one counter that
every catalogue write moves, so the prediction service re-reads the catalogue only when it
changed.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.add_column(
            sa.Column("available", sa.Boolean(), server_default=sa.true(), nullable=False)
        )
        batch.add_column(sa.Column("source", sa.String(length=128), nullable=True))
        batch.create_index(batch.f("ix_items_source"), ["source"], unique=False)
    op.create_table(
        "catalogue_state",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalogue_state")),
    )
    op.execute(
        "INSERT INTO catalogue_state (id, revision, updated_at) VALUES (1, 0, CURRENT_TIMESTAMP)"
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "UPDATE items SET available = (attributes->>'available')::boolean, "
            "attributes = NULLIF(attributes - 'available', '{}'::jsonb) "
            "WHERE attributes ? 'available' AND jsonb_typeof(attributes->'available') = 'boolean'"
        )
    else:
        op.execute(
            "UPDATE items SET available = json_extract(attributes, '$.available'), "
            "attributes = NULLIF(json_remove(attributes, '$.available'), '{}') "
            "WHERE json_type(attributes, '$.available') IN ('true', 'false')"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "UPDATE items SET attributes = COALESCE(attributes, '{}'::jsonb) "
            "|| jsonb_build_object('available', available) WHERE source IS NOT NULL"
        )
    else:
        op.execute(
            "UPDATE items SET attributes = json_set(COALESCE(attributes, '{}'), "
            "'$.available', json(CASE WHEN available THEN 'true' ELSE 'false' END)) "
            "WHERE source IS NOT NULL"
        )
    op.drop_table("catalogue_state")
    with op.batch_alter_table("items") as batch:
        batch.drop_index(batch.f("ix_items_source"))
        batch.drop_column("source")
        batch.drop_column("available")
