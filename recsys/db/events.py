"""Events recorded one request at a time (the prediction API): transactional and idempotent.

Unknown users and items are created in the same transaction; an event already stored (same
user, item, event type and time) is skipped, so a retried request adds nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Table, insert, select
from sqlalchemy.dialects import postgresql, sqlite

from recsys.db.schema import (
    event_recommendations_table,
    interactions_table,
    items_table,
    users_table,
)


@dataclass(frozen=True)
class Event:
    user_id: str
    item_id: str
    event_type: str = "interaction"
    value: float | None = None
    occurred_at_ms: int | None = None  # None: now
    recommendation_id: str | None = None  # the response that showed the item, if known


@dataclass(frozen=True)
class Recorded:
    inserted: int
    duplicates: int
    new_users: int
    new_items: int


def record_events(engine: Engine, events: Sequence[Event]) -> Recorded:
    """Store ``events`` in one transaction; they are readable when this returns."""
    now = int(time.time() * 1000)
    with engine.begin() as conn:
        users, new_users = _ensure(conn, users_table, {e.user_id for e in events})
        items, new_items = _ensure(conn, items_table, {e.item_id for e in events})
        rows = [
            {
                "user_id": users[e.user_id],
                "item_id": items[e.item_id],
                "event_type": e.event_type,
                "value": e.value,
                "occurred_at": now if e.occurred_at_ms is None else e.occurred_at_ms,
            }
            for e in events
        ]
        t = interactions_table.c
        stored = conn.execute(
            _insert(conn, interactions_table)
            .values(rows)
            .on_conflict_do_nothing()
            .returning(t.id, t.user_id, t.item_id, t.event_type, t.occurred_at)
        ).all()
        inserted = len(stored)
        named = {
            (r["user_id"], r["item_id"], r["event_type"], r["occurred_at"]): e.recommendation_id
            for r, e in zip(rows, events, strict=True)
            if e.recommendation_id is not None
        }
        links = [
            {"interaction_id": row[0], "recommendation_id": named[key]}
            for row in stored
            if (key := tuple(row[1:])) in named
        ]
        if links:
            conn.execute(insert(event_recommendations_table), links)
    return Recorded(inserted, len(rows) - inserted, new_users, new_items)


def _insert(conn: Connection, table: Table) -> Any:
    dialect: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def _ensure(conn: Connection, table: Table, external_ids: set[str]) -> tuple[dict[str, int], int]:
    """Primary key of each external id, creating missing rows; also how many were created."""
    ids = sorted(external_ids)
    created = conn.execute(
        _insert(conn, table)
        .values([{"external_id": i} for i in ids])
        .on_conflict_do_nothing(index_elements=["external_id"])
        .returning(table.c.id)
    ).all()
    found = conn.execute(
        select(table.c.external_id, table.c.id).where(table.c.external_id.in_(ids))
    ).all()
    return {str(eid): int(pk) for eid, pk in found}, len(created)


def missing_items(engine: Engine, external_ids: set[str]) -> set[str]:
    """The ids among ``external_ids`` that the catalogue (``items``) does not hold."""
    ids = sorted(external_ids)
    with engine.connect() as conn:
        found = conn.execute(
            select(items_table.c.external_id).where(items_table.c.external_id.in_(ids))
        ).scalars()
        return set(ids) - set(found)
