"""SQLAlchemy 2 typed tables for users, items, interactions and import runs.

Times of events are Unix epoch milliseconds in UTC (BIGINT): one unambiguous unit on SQLite
and PostgreSQL, exact in uniqueness checks, and cheap to extract into numpy.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments an INTEGER PRIMARY KEY, so 64-bit keys fall back to INTEGER there.
BigIntKey = BigInteger().with_variant(Integer(), "sqlite")
# None is stored as SQL NULL, not as the JSON literal null.
JSONType = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    """A user by external id, with the demographics a dataset provides."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(255), unique=True)
    age: Mapped[int | None] = mapped_column(Integer)
    gender: Mapped[str | None] = mapped_column(String(32))
    occupation: Mapped[str | None] = mapped_column(String(64))
    zip_code: Mapped[str | None] = mapped_column(String(32))
    attributes: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Item(Base):
    """A catalogue item by external id, with its descriptive attributes."""

    __tablename__ = "items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(255), unique=True)
    title: Mapped[str | None] = mapped_column(Text)
    genres: Mapped[list[str] | None] = mapped_column(JSONType)
    year: Mapped[int | None] = mapped_column(Integer)
    price: Mapped[float | None] = mapped_column(Numeric(12, 2, asdecimal=False))
    attributes: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ImportRun(Base):
    """One run of an importer: what was read, loaded and rejected, and where the rejects went."""

    __tablename__ = "imports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    rows_read: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_inserted: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_rejected: Mapped[int] = mapped_column(BigInteger, default=0)
    # Events whose time is earlier than the user's previous event in the file's own order.
    rows_out_of_order: Mapped[int] = mapped_column(BigInteger, default=0)
    rejects_by_reason: Mapped[dict[str, int] | None] = mapped_column(JSONType)
    rejects_path: Mapped[str | None] = mapped_column(Text)


class Interaction(Base):
    """One event: a user did ``event_type`` to an item at ``occurred_at`` (epoch ms, UTC).

    The same (user, item, event type, time) is one event however often it is imported, which
    makes re-imports a no-op. That unique index leads with (user, time), so it also serves
    per-user history in time order; a second index serves extraction by time.

    There are no foreign keys on this table: the loader creates every referenced user and item
    in the same transaction, and on PostgreSQL the per-row FK triggers cost 5.7 s of 13.2 s
    when inserting 1M events. Extraction reports any orphan row it finds.
    """

    __tablename__ = "interactions"
    __table_args__ = (
        UniqueConstraint("user_id", "occurred_at", "item_id", "event_type"),
        Index(None, "occurred_at"),
    )

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True)
    user_id: Mapped[int] = mapped_column(Integer)
    item_id: Mapped[int] = mapped_column(Integer)
    event_type: Mapped[str] = mapped_column(String(32))
    value: Mapped[float | None] = mapped_column(Float)
    occurred_at: Mapped[int] = mapped_column(BigInteger)
    import_id: Mapped[int | None] = mapped_column(Integer)


# Core-level handles for bulk statements (the ORM classes type ``__table__`` loosely).
users_table = cast(Table, User.__table__)
items_table = cast(Table, Item.__table__)
imports_table = cast(Table, ImportRun.__table__)
interactions_table = cast(Table, Interaction.__table__)
