"""Bulk writes of an :class:`ImportBatch`: catalogue upserts, then its events, in one transaction.

The events go through :mod:`recsys.data.event_writes` (``COPY`` into PostgreSQL, multi-row
``INSERT OR IGNORE`` into SQLite); a row already in the store is skipped, so re-imports add
nothing. :func:`prepare_events` lets a sync resolve and order a chunk ahead of its load.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Engine, Table, and_, func, insert, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from recsys.data.event_writes import EventColumns, event_columns, insert_interactions
from recsys.data.frames import ImportBatch
from recsys.data.store_ids import KnownIds, event_ids
from recsys.db import catalogue
from recsys.db.schema import imports_table, items_table, users_table

logger = logging.getLogger(__name__)

# A load of at least ANALYZE_MIN_ROWS events that adds more than ANALYZE_SHARE of the rows the
# planner believes the table holds refreshes its statistics (see refresh_statistics).
ANALYZE_MIN_ROWS = 10_000
ANALYZE_SHARE = 0.2


@dataclass(frozen=True)
class LoadResult:
    """What a load did; ``rows_skipped`` rows were already stored (or repeated in the input).

    Every record of the event file is counted once:
    ``rows_read == rows_inserted + rows_skipped + rows_rejected``. Rows of item and user files
    that were rejected are counted apart, in ``catalogue_rejected``.
    """

    import_id: int
    kind: str
    source: str
    rows_read: int
    rows_inserted: int
    rows_skipped: int
    rows_rejected: int
    rejects_by_reason: dict[str, int]
    rejects_path: str | None
    users_total: int
    items_total: int
    seconds: float
    catalogue_rejected: int = 0
    catalogue_rejects_by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return (self.rows_inserted + self.rows_skipped) / self.seconds if self.seconds else 0.0

    def report(self) -> dict[str, Any]:
        """What an import says it did, as the CLI prints it."""
        return {
            "source": self.source,
            "import_id": self.import_id,
            "rows_read": self.rows_read,
            "rows_inserted": self.rows_inserted,
            "rows_already_stored": self.rows_skipped,
            "rows_rejected": self.rows_rejected,
            "rejects_by_reason": self.rejects_by_reason,
            "catalogue_rows_rejected": self.catalogue_rejected,
            "catalogue_rejects_by_reason": self.catalogue_rejects_by_reason,
            "rejects_file": self.rejects_path,
            "users": self.users_total,
            "items": self.items_total,
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows_per_second),
        }


@dataclass(frozen=True)
class EventRows:
    """A batch's events as the store writes them (store keys, in insert order) and how many
    went back in time."""

    columns: EventColumns
    out_of_order: int

    def __len__(self) -> int:
        return len(self.columns)


def prepare_events(engine: Engine, batch: ImportBatch, known: KnownIds) -> EventRows | None:
    """``batch``'s events ready to write: users and items resolved to keys (the missing ones
    inserted and committed here), rows ordered and converted.

    Lets a pipeline (a source sync) prepare the next chunk while the store still writes the
    chunk before: :func:`load_batch` given these rows only writes them. The ids then exist
    before their events do; a load that fails after this leaves users and items with no
    events, which a later load of the same rows uses. None for a batch that describes users
    or items: their attributes are upserted inside the load's own transaction.
    """
    if not batch.users.empty or not batch.items.empty:
        return None
    events = batch.interactions
    staged: dict[str, dict[str, int]] = {}
    with engine.begin() as conn:
        user_pk, _ = _catalogue_keys(
            conn, users_table, batch.users, "user_id", events, known, staged
        )
        item_pk, _ = _catalogue_keys(
            conn, items_table, batch.items, "item_id", events, known, staged
        )
    for table, pairs in staged.items():
        known.add(table, pairs)
    columns = event_columns(events, user_pk, item_pk)
    if engine.dialect.name == "sqlite":
        columns = columns.with_lists()
    return EventRows(columns, count_out_of_order(events))


def load_batch(
    engine: Engine,
    batch: ImportBatch,
    rejects_path: str | None = None,
    *,
    known: KnownIds | None = None,
    prepared: EventRows | None = None,
    analyze: bool = True,
) -> LoadResult:
    """Write ``batch`` in one transaction and record the run in ``imports``.

    ``known`` (kept by the caller across loads into ``engine``) spares looking up the ids it
    holds; the ids this load resolves join it once the transaction commits. ``prepared``
    (from :func:`prepare_events`) are the events resolved and ordered already: the load
    writes them only. ``analyze=False`` leaves the planner's statistics to the caller (a sync
    refreshes them once, after its last chunk, rather than as the first chunks double the
    table).
    """
    started = time.perf_counter()
    staged: dict[str, dict[str, int]] = {}
    with engine.begin() as conn:
        import_id = conn.execute(
            insert(imports_table)
            .values(
                kind=batch.kind,
                source=batch.source,
                started_at=datetime.now(UTC),
                rows_read=batch.rows_read,
                rows_inserted=0,
                rows_rejected=len(batch.rejects),
                rows_out_of_order=(
                    count_out_of_order(batch.interactions)
                    if prepared is None
                    else prepared.out_of_order
                ),
                rejects_by_reason=batch.rejects_by_reason or None,
                rejects_path=rejects_path,
            )
            .returning(imports_table.c.id)
        ).scalar_one()

        events = batch.interactions
        if prepared is not None:
            if len(prepared) != len(events):
                raise ValueError("rows prepared for another batch: one per event expected")
            inserted = insert_interactions(conn, prepared.columns, import_id)
        else:
            user_pk, _ = _catalogue_keys(
                conn, users_table, batch.users, "user_id", events, known, staged
            )
            item_pk, described = _catalogue_keys(
                conn, items_table, batch.items, "item_id", events, known, staged
            )
            if described:
                catalogue.bump(conn)  # titles, prices or availability changed
            columns = event_columns(events, user_pk, item_pk)
            inserted = insert_interactions(conn, columns, import_id)

        conn.execute(
            update(imports_table)
            .where(imports_table.c.id == import_id)
            .values(rows_inserted=inserted, finished_at=datetime.now(UTC))
        )
        users_total = conn.execute(select(func.count()).select_from(users_table)).scalar_one()
        items_total = conn.execute(select(func.count()).select_from(items_table)).scalar_one()
    if known is not None:
        for table, pairs in staged.items():
            known.add(table, pairs)
    if analyze:
        refresh_statistics(engine, inserted)
    seconds = time.perf_counter() - started
    logger.info("loaded %d of %d rows in %.2fs", inserted, len(events), seconds)
    return LoadResult(
        import_id=import_id,
        kind=batch.kind,
        source=batch.source,
        rows_read=batch.rows_read,
        rows_inserted=inserted,
        rows_skipped=len(events) - inserted,
        rows_rejected=len(batch.rejects),
        rejects_by_reason=batch.rejects_by_reason,
        rejects_path=rejects_path,
        users_total=users_total,
        items_total=items_total,
        seconds=seconds,
        catalogue_rejected=len(batch.catalogue_rejects),
        catalogue_rejects_by_reason=batch.catalogue_rejects_by_reason,
    )


def refresh_statistics(engine: Engine, inserted: int) -> bool:
    """ANALYZE the event and catalogue tables after a load that grew them by a large share.

    PostgreSQL plans from statistics that autovacuum refreshes only later (its naptime, then
    10% of the rows changed): right after a bulk load into a store of 1M events the planner
    still believed in the empty or smaller table and read a user's history with a sequential
    scan of every event, 182 ms where the index answers in 1.2 ms, so every request of the
    service that read histories waited that long. A load that adds ``ANALYZE_MIN_ROWS`` rows
    and more than ``ANALYZE_SHARE`` of the table's rows (as last estimated) refreshes the
    statistics at once: ANALYZE reads a fixed sample, about a second at 20M events, and a
    sync's many chunks trigger it only as the table doubles. Returns whether it ran.
    """
    if engine.dialect.name != "postgresql" or inserted < ANALYZE_MIN_ROWS:
        return False
    with engine.connect() as conn:
        estimated = conn.execute(
            text("SELECT reltuples FROM pg_class WHERE oid = 'interactions'::regclass")
        ).scalar_one()
        if estimated >= 0 and inserted <= ANALYZE_SHARE * estimated:
            return False
        conn.execute(text("ANALYZE interactions, users, items"))
        conn.commit()
    logger.info("refreshed the planner's statistics after %d new events", inserted)
    return True


def count_out_of_order(events: pd.DataFrame) -> int:
    """Events dated before the same user's previous event, in the order the input lists them."""
    if len(events) < 2:
        return 0
    codes, _ = pd.factorize(events["user_id"])
    order = np.argsort(codes, kind="stable")
    same_user = np.diff(codes[order]) == 0
    went_back = np.diff(events["occurred_at"].to_numpy()[order]) < 0
    return int(np.count_nonzero(same_user & went_back))


def _upsert_catalogue(
    conn: Connection, table: Table, frame: pd.DataFrame, key: str, events: pd.DataFrame
) -> tuple[pd.Series, int]:
    """Insert new ids and fill attributes the store lacks; returns external id -> primary key
    and how many described rows were inserted or changed.

    Attributes given now win over stored ones; a missing attribute never erases a stored one;
    rows whose attributes are unchanged are not rewritten.
    """
    stored = _stored_ids(conn, table)
    described = frame.drop_duplicates(subset=key, keep="last")
    columns = [c for c in frame.columns if c != key]
    parts = [(described, columns)]
    if "available" in columns:
        # A NOT NULL column: a new item of unknown availability is available (the column's
        # default); stored items of unknown availability are written without the column.
        unknown = described["available"].isna()
        new = unknown & ~described[key].astype(str).isin(stored.index)
        described = described.assign(available=described["available"].mask(new, True))
        keep = unknown & ~new
        parts = [
            (described[~keep], columns),
            (described[keep].drop(columns="available"), [c for c in columns if c != "available"]),
        ]
    changed = 0
    for part, names in parts:
        if not part.empty:
            changed += _upsert_rows(conn, table, part, key, names)
    known = stored.index.union(pd.Index(described[key].astype(str)))
    bare = pd.Index(events[key].unique()).difference(known)
    insert_fn: Any = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    for chunk in _chunks([{"external_id": i} for i in bare], 10_000):
        # Another load may add the same new id meanwhile: theirs stands, ours does nothing.
        conn.execute(
            insert_fn(table).values(chunk).on_conflict_do_nothing(index_elements=["external_id"])
        )
    if described.empty and bare.empty:
        return stored, changed
    return _stored_ids(conn, table), changed


def _upsert_rows(
    conn: Connection, table: Table, rows: pd.DataFrame, key: str, columns: list[str]
) -> int:
    """Insert or update the rows; returns how many were inserted or actually changed (rows
    an unchanged description leaves alone return nothing)."""
    insert_fn: Any = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = insert_fn(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=["external_id"],
        set_={c: func.coalesce(stmt.excluded[c], table.c[c]) for c in columns},
        where=or_(
            *(
                and_(stmt.excluded[c].is_not(None), stmt.excluded[c].is_distinct_from(table.c[c]))
                for c in columns
            )
        ),
    )
    values = [_clean_row(r, key, columns) for r in rows.itertuples(index=False)]
    changed = 0
    # executemany of one compiled statement (SQLAlchemy batches it per driver).
    for chunk in _chunks(values, 10_000):
        changed += len(conn.execute(stmt.returning(table.c.id), chunk).all())
    return changed


def _stored_ids(conn: Connection, table: Table) -> pd.Series:
    stored = conn.execute(select(table.c.external_id, table.c.id)).all()
    return pd.Series(
        np.fromiter((pk for _, pk in stored), dtype=np.int64, count=len(stored)),
        index=pd.Index([eid for eid, _ in stored], dtype=object),
    )


def _clean_row(row: tuple[Any, ...], key: str, columns: list[str]) -> dict[str, Any]:
    values = row._asdict()  # type: ignore[attr-defined]
    out: dict[str, Any] = {"external_id": str(values[key])}
    for c in columns:
        v = values[c]
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
            v = None
        elif isinstance(v, np.generic):
            v = v.item()
        elif isinstance(v, np.ndarray):
            v = v.tolist()
        out[c] = v
    return out


def _catalogue_keys(
    conn: Connection,
    table: Table,
    frame: pd.DataFrame,
    key: str,
    events: pd.DataFrame,
    known: KnownIds | None,
    staged: dict[str, dict[str, int]],
) -> tuple[np.ndarray, int]:
    """The key of each event's id in ``events[key]`` (after upserting ``frame``'s rows), and
    how many described rows were inserted or changed. Pairs resolved without a description
    go to ``staged``, for ``known`` once the transaction commits."""
    if not frame.empty:
        ids, described = _upsert_catalogue(conn, table, frame, key, events)
        return _lookup(ids, events[key]), described
    known_pairs = None if known is None else known.of(table.name)
    pk, staged[table.name] = event_ids(conn, table, events[key], known_pairs)
    return pk, 0


def _lookup(ids: pd.Series, keys: pd.Series) -> np.ndarray:
    positions = ids.index.get_indexer(pd.Index(keys))
    if (positions < 0).any():
        raise AssertionError("an interaction refers to an id that was not upserted")
    return ids.to_numpy()[positions]


def _chunks(rows: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]
