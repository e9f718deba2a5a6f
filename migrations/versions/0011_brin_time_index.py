"""interactions: the index on occurred_at becomes a BRIN index on PostgreSQL

A B-tree on the time cost a third of the server's work when inserting events (a batch is
written in user order, which lands its times all over the tree); a BRIN index keeps the
smallest and largest time of each range of pages, which events arriving in time order keep
narrow. SQLite keeps its B-tree.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-08
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_interactions_occurred_at"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index(INDEX, table_name="interactions")
    op.create_index(
        INDEX,
        "interactions",
        ["occurred_at"],
        postgresql_using="brin",
        postgresql_with={"autosummarize": "on"},
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index(INDEX, table_name="interactions")
    op.create_index(INDEX, "interactions", ["occurred_at"])
