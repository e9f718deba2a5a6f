"""Read-only queries that return plain data (dicts, lists) for the CLI and services."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, Select, Table, bindparam, func, select

from recsys.db.schema import imports_table, interactions_table, items_table, users_table

if TYPE_CHECKING:
    from recsys.data.extract import IdMap


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


USER_ATTRIBUTES = ("age", "gender", "occupation", "zip_code", "attributes")
ITEM_ATTRIBUTES = ("title", "genres", "year", "price", "attributes")


def catalogue_attributes(
    engine: Engine, users: IdMap, items: IdMap
) -> dict[str, dict[str, list[Any]]]:
    """Attribute columns of the users and items of two id maps, as lists in id-map order.

    ``result["users"]["age"][k]`` describes index ``k + 1`` of ``users`` (padding excluded);
    an id missing from its table gets None in every column. Keys are
    :data:`USER_ATTRIBUTES` and :data:`ITEM_ATTRIBUTES`.
    """
    with engine.connect() as conn:
        return {
            "users": _attributes_by_id(conn, users_table, USER_ATTRIBUTES, users.to_list()),
            "items": _attributes_by_id(conn, items_table, ITEM_ATTRIBUTES, items.to_list()),
        }


def _attributes_by_id(
    conn: Connection, table: Table, columns: tuple[str, ...], ids: list[str]
) -> dict[str, list[Any]]:
    # One scan of the table: an IN list of every id would exceed parameter limits.
    position = {external_id: k for k, external_id in enumerate(ids)}
    out: dict[str, list[Any]] = {c: [None] * len(ids) for c in columns}
    selected = select(table.c.external_id, *(table.c[c] for c in columns))
    for row in conn.execute(selected):
        k = position.get(row[0])
        if k is not None:
            for c, value in zip(columns, row[1:], strict=True):
                out[c][k] = value
    return out


def user_history(engine: Engine, user_id: str) -> list[str] | None:
    """External ids of the items a user interacted with, oldest first; None for no such user.

    Reads the live table (the unique index on (user_id, occurred_at, ...) serves it), so an
    event recorded a moment ago is part of the answer.
    """
    return user_histories(engine, [user_id]).get(user_id)


def _histories_query() -> Select[Any]:
    events = interactions_table.c
    joined = users_table.outerjoin(
        interactions_table, events.user_id == users_table.c.id
    ).outerjoin(items_table, items_table.c.id == events.item_id)
    return (
        select(users_table.c.external_id, items_table.c.external_id)
        .select_from(joined)
        .where(users_table.c.external_id.in_(bindparam("user_ids", expanding=True)))
        .order_by(users_table.c.id, events.occurred_at, events.id)
    )


_HISTORIES = _histories_query()  # built once: the serving hot path runs it per batch


def user_histories(engine: Engine, user_ids: Sequence[str]) -> dict[str, list[str]]:
    """:func:`user_history` for many users in one query; users that do not exist are absent.

    A user with no events maps to an empty list.
    """
    if not user_ids:
        return {}
    with engine.connect() as conn:
        rows = conn.execute(_HISTORIES, {"user_ids": list(dict.fromkeys(user_ids))}).all()
    histories: dict[str, list[str]] = {}
    for user, item in rows:
        history = histories.setdefault(str(user), [])
        if item is not None:
            history.append(str(item))
    return histories


def active_users(engine: Engine, *, min_events: int, limit: int) -> list[str]:
    """The first ``limit`` user ids (in id order) with at least ``min_events`` interactions."""
    query = (
        select(users_table.c.external_id)
        .join(interactions_table, interactions_table.c.user_id == users_table.c.id)
        .group_by(users_table.c.external_id)
        .having(func.count() >= min_events)
        .order_by(users_table.c.external_id)
        .limit(limit)
    )
    with engine.connect() as conn:
        return [str(user_id) for user_id in conn.execute(query).scalars()]
