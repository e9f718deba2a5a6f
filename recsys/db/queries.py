"""Read-only queries that return plain data (dicts, lists) for the CLI and services."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, select

from recsys.db.schema import imports_table, interactions_table, items_table, users_table


def ms_to_iso(ms: int | None) -> str | None:
    """Epoch milliseconds as an ISO 8601 UTC string (None stays None)."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")


def stats(engine: Engine) -> dict[str, Any]:
    """Counts of users, items, interactions per event type, the time range and the last import."""
    events = interactions_table.c
    with engine.connect() as conn:
        users = conn.execute(select(func.count()).select_from(users_table)).scalar_one()
        items = conn.execute(select(func.count()).select_from(items_table)).scalar_one()
        per_type = conn.execute(
            select(events.event_type, func.count())
            .group_by(events.event_type)
            .order_by(events.event_type)
        ).all()
        first, last = conn.execute(
            select(func.min(events.occurred_at), func.max(events.occurred_at))
        ).one()
        active_users = conn.execute(select(func.count(func.distinct(events.user_id)))).scalar_one()
        active_items = conn.execute(select(func.count(func.distinct(events.item_id)))).scalar_one()
        imports = conn.execute(select(func.count()).select_from(imports_table)).scalar_one()
    by_type = {str(kind): int(count) for kind, count in per_type}
    return {
        "users": int(users),
        "items": int(items),
        "interactions": sum(by_type.values()),
        "interactions_by_event_type": by_type,
        "users_with_interactions": int(active_users),
        "items_with_interactions": int(active_items),
        "first_occurred_at": ms_to_iso(first),
        "last_occurred_at": ms_to_iso(last),
        "imports": int(imports),
    }
