"""Read-only queries that return plain data (dicts, lists) for the CLI and services."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, Select, Table, bindparam, func, select

from recsys.db.schema import (
    imports_table,
    interactions_table,
    items_table,
    source_watermarks_table,
    users_table,
)

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
        # Apart: SQLite answers a lone min() or max() from the index, both together by a scan.
        first = conn.execute(select(func.min(events.occurred_at))).scalar()
        last = conn.execute(select(func.max(events.occurred_at))).scalar()
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


DAY_MS = 86_400_000


def events_per_day(engine: Engine) -> list[tuple[int, str, int]]:
    """Events per UTC day and event type: (the day's start in epoch ms, type, count), by day."""
    events = interactions_table.c
    day = events.occurred_at // DAY_MS
    query = (
        select(day, events.event_type, func.count())
        .group_by(day, events.event_type)
        .order_by(day, events.event_type)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [(int(d) * DAY_MS, str(kind), int(count)) for d, kind, count in rows]


def recent_imports(engine: Engine, *, limit: int = 50) -> list[dict[str, Any]]:
    """The latest runs of the importers and of the source syncs (one row per loaded chunk),
    newest first, with their counts, rejects per reason and rejects file."""
    c = imports_table.c
    query = select(imports_table).order_by(c.id.desc()).limit(limit)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        {
            "id": r.id,
            "kind": r.kind,
            "source": r.source,
            "started_at": r.started_at,
            "finished_at": r.finished_at,
            "rows_read": r.rows_read,
            "rows_inserted": r.rows_inserted,
            "rows_rejected": r.rows_rejected,
            "rows_out_of_order": r.rows_out_of_order,
            "rejects_by_reason": dict(r.rejects_by_reason or {}),
            "rejects_path": r.rejects_path,
        }
        for r in rows
    ]


def import_run(engine: Engine, import_id: int) -> dict[str, Any] | None:
    """One row of ``imports`` (as :func:`recent_imports` gives it), or None."""
    with engine.connect() as conn:
        row = conn.execute(select(imports_table).where(imports_table.c.id == import_id)).first()
    return None if row is None else {k: row._mapping[k] for k in row._mapping}


def source_syncs(engine: Engine, *, kind: str = "source") -> list[dict[str, Any]]:
    """Per database source: its watermark (column, value, when it moved) and the totals of
    its loaded chunks (``imports`` rows of ``kind``), with rejects per reason and the latest
    rejects file."""
    c = imports_table.c
    totals = (
        select(
            c.source,
            func.count(),
            func.max(c.id),
            func.max(c.finished_at),
            func.sum(c.rows_read),
            func.sum(c.rows_inserted),
            func.sum(c.rows_rejected),
        )
        .where(c.kind == kind)
        .group_by(c.source)
    )
    w = source_watermarks_table.c
    out: dict[str, dict[str, Any]] = {}
    with engine.connect() as conn:
        for name, chunks, last_id, last_at, read, inserted, rejected in conn.execute(totals):
            out[str(name)] = {
                "name": str(name),
                "chunks": int(chunks),
                "last_import_id": int(last_id),
                "last_loaded_at": last_at,
                "rows_read": int(read or 0),
                "rows_inserted": int(inserted or 0),
                "rows_rejected": int(rejected or 0),
                "rejects_by_reason": {},
                "rejects_path": None,
                "watermark": None,
            }
        reasons = select(c.source, c.id, c.rejects_by_reason, c.rejects_path).where(
            c.kind == kind, c.rejects_path.is_not(None)
        )
        for name, import_id, by_reason, path in conn.execute(reasons.order_by(c.id)):
            entry = out[str(name)]
            for reason, count in (by_reason or {}).items():
                entry["rejects_by_reason"][reason] = (
                    entry["rejects_by_reason"].get(reason, 0) + count
                )
            entry["rejects_path"], entry["rejects_import_id"] = path, import_id
        for name, column, value, updated_at in conn.execute(
            select(w.name, w.column_name, w.value, w.updated_at)
        ):
            entry = out.setdefault(
                str(name),
                {"name": str(name), "chunks": 0, "rows_read": 0, "rows_inserted": 0,
                 "rows_rejected": 0, "rejects_by_reason": {}, "rejects_path": None},
            )  # fmt: skip
            entry["watermark"] = {"column": column, "value": value, "updated_at": updated_at}
    return sorted(out.values(), key=lambda entry: entry["name"])


def find_users(engine: Engine, prefix: str, *, limit: int = 20) -> list[str]:
    """External user ids starting with ``prefix``, in id order (the unique index serves it)."""
    u = users_table.c
    query = (
        select(u.external_id)
        .where(u.external_id.startswith(prefix, autoescape=True))
        .order_by(u.external_id)
        .limit(limit)
    )
    with engine.connect() as conn:
        return [str(v) for v in conn.execute(query).scalars()]


def find_items(engine: Engine, text: str, *, limit: int = 20) -> list[tuple[str, str | None]]:
    """Items whose external id starts with ``text`` or whose title contains it:
    (id, title), ids first."""
    i = items_table.c
    by_id = (
        select(i.external_id, i.title)
        .where(i.external_id.startswith(text, autoescape=True))
        .order_by(i.external_id)
        .limit(limit)
    )
    by_title = (
        select(i.external_id, i.title)
        .where(func.lower(i.title).contains(text.lower(), autoescape=True))
        .order_by(i.external_id)
        .limit(limit)
    )
    with engine.connect() as conn:
        found = dict(conn.execute(by_id).all())
        for item_id, title in conn.execute(by_title):
            found.setdefault(item_id, title)
    return [(str(k), v) for k, v in list(found.items())[:limit]]


def user_events(engine: Engine, user_id: str, *, limit: int = 100) -> list[dict[str, Any]]:
    """A user's latest events, newest first: item id, title, event type, value, time (ms)."""
    events = interactions_table.c
    query = (
        select(
            items_table.c.external_id,
            items_table.c.title,
            events.event_type,
            events.value,
            events.occurred_at,
        )
        .select_from(
            interactions_table.join(users_table, users_table.c.id == events.user_id).join(
                items_table, items_table.c.id == events.item_id
            )
        )
        .where(users_table.c.external_id == user_id)
        .order_by(events.occurred_at.desc(), events.id.desc())
        .limit(limit)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        {"item_id": str(item), "title": title, "event_type": kind, "value": value,
         "occurred_at": int(at)}
        for item, title, kind, value, at in rows
    ]  # fmt: skip


def item_titles(engine: Engine, item_ids: Sequence[str]) -> dict[str, str | None]:
    """Titles of the given external item ids (ids not in the store are absent)."""
    if not item_ids:
        return {}
    i = items_table.c
    query = select(i.external_id, i.title).where(
        i.external_id.in_(bindparam("ids", expanding=True))
    )
    with engine.connect() as conn:
        rows = conn.execute(query, {"ids": list(dict.fromkeys(item_ids))}).all()
    return {str(k): v for k, v in rows}
