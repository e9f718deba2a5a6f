"""Bulk writes of an :class:`ImportBatch`: catalogue upserts, then the fastest path per database.

PostgreSQL streams interactions with COPY, straight into the table when none of them is stored
yet, else into a temporary table followed by ``INSERT ... ON CONFLICT DO NOTHING``; SQLite
uses one ``executemany`` of ``INSERT OR IGNORE`` in one transaction. Either way a row already
in the store is skipped, so re-imports add nothing.
"""

from __future__ import annotations

import itertools
import logging
import math
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import psycopg
from sqlalchemy import Connection, Engine, Table, and_, func, insert, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from recsys.data.frames import ImportBatch
from recsys.data.store_ids import KnownIds, event_ids
from recsys.db import catalogue
from recsys.db.schema import imports_table, items_table, users_table

logger = logging.getLogger(__name__)

SQLITE_BULK_CACHE_KIB = 512 * 1024
# Rows per INSERT statement into SQLite (fewer where its limit on parameters is lower).
SQLITE_ROWS_PER_INSERT = 5_000
# Rows per write of COPY text, and how COPY's text format spells NULL.
COPY_ROWS = 10_000
# A load of at least ANALYZE_MIN_ROWS events that adds more than ANALYZE_SHARE of the rows the
# planner believes the table holds refreshes its statistics (see refresh_statistics).
ANALYZE_MIN_ROWS = 10_000
ANALYZE_SHARE = 0.2
NULL = "\\N"


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
    """A batch's events as the store writes them: one list per column (user key, item key,
    event type, value or None, time), in insert order, and how many went back in time."""

    columns: tuple[list[Any], ...]
    out_of_order: int

    def __len__(self) -> int:
        return len(self.columns[0])


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
    return EventRows(_event_columns(events, user_pk, item_pk), count_out_of_order(events))


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
            inserted = _insert_interactions(conn, prepared.columns, import_id)
        else:
            user_pk, _ = _catalogue_keys(
                conn, users_table, batch.users, "user_id", events, known, staged
            )
            item_pk, described = _catalogue_keys(
                conn, items_table, batch.items, "item_id", events, known, staged
            )
            if described:
                catalogue.bump(conn)  # titles, prices or availability changed
            columns = _event_columns(events, user_pk, item_pk)
            inserted = _insert_interactions(conn, columns, import_id)

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


def _event_columns(
    events: pd.DataFrame, user_pk: np.ndarray, item_pk: np.ndarray
) -> tuple[list[Any], ...]:
    """The events as lists of Python values, one per column, in the order they are inserted."""
    # (user, time, item) order: the unique and per-user indexes then grow mostly at the end,
    # and two loads at once that share rows meet them in the same order (neither holds a row
    # the other waits for while waiting for one the other holds).
    order = np.lexsort((item_pk, events["occurred_at"].to_numpy(), user_pk))
    events = events.iloc[order]
    value = events["value"].to_numpy(dtype=np.float64, na_value=np.nan)
    no_value = np.isnan(value)
    return (
        user_pk[order].tolist(),
        item_pk[order].tolist(),
        events["event_type"].tolist(),
        [None] * len(value)
        if no_value.all()
        else [None if math.isnan(v) else v for v in value.tolist()],
        events["occurred_at"].to_numpy(dtype=np.int64).tolist(),
    )


def _insert_interactions(conn: Connection, columns: tuple[list[Any], ...], import_id: int) -> int:
    if not columns[0]:
        return 0
    if conn.dialect.name == "postgresql":
        return _copy_postgres(conn, columns, import_id)
    return _executemany_sqlite(conn, columns, import_id)


def _executemany_sqlite(conn: Connection, columns: tuple[list[Any], ...], import_id: int) -> int:
    """``INSERT OR IGNORE`` the rows, up to ``SQLITE_ROWS_PER_INSERT`` in one statement.

    One row per statement gave up Python's lock for every row (SQLite runs a statement without
    it) and had to win it back each time: beside a busy thread, such as a sync preparing its
    next chunk, each row could wait a thread switch, and a sync ran several times slower. Many
    rows per statement also save a fifth of the time on their own.
    """
    raw = conn.connection.driver_connection
    cursor = raw.cursor()  # type: ignore[union-attr]
    # Index maintenance on random keys thrashes SQLite's default 2 MB page cache.
    cursor.execute(f"PRAGMA cache_size=-{SQLITE_BULK_CACHE_KIB}")
    width = len(columns) + 1
    limit = raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)  # type: ignore[union-attr]
    per = max(1, min(SQLITE_ROWS_PER_INSERT, limit // width))
    values = list(itertools.chain.from_iterable(zip(*columns, itertools.repeat(import_id))))
    rows = len(columns[0])
    full = rows - rows % per
    head = (
        "INSERT OR IGNORE INTO interactions "
        "(user_id, item_id, event_type, value, occurred_at, import_id) VALUES "
    )
    row = "(" + ", ".join(["?"] * width) + ")"
    inserted = 0
    if full:
        step = per * width
        cursor.executemany(
            head + ", ".join([row] * per),
            (values[at : at + step] for at in range(0, full * width, step)),
        )
        inserted += cursor.rowcount
    if full < rows:
        cursor.execute(head + ", ".join([row] * (rows - full)), values[full * width :])
        inserted += cursor.rowcount
    cursor.execute("PRAGMA cache_size=-2000")
    cursor.close()
    return inserted


def _copy_postgres(conn: Connection, columns: tuple[list[Any], ...], import_id: int) -> int:
    """COPY straight into the table when no row exists yet; otherwise stage and skip conflicts.

    A sample of the rows is looked up first, so a re-import goes straight to the staged
    ``INSERT ... ON CONFLICT DO NOTHING``; an overlap the sample missed aborts the direct COPY
    (under a savepoint) and the staged path takes over.
    """
    raw = conn.connection.driver_connection
    with raw.cursor() as cursor:  # type: ignore[union-attr]
        if not _any_stored(cursor, columns):
            inserted = _copy_direct(cursor, columns, import_id)
            if inserted is not None:
                return inserted
        return _copy_staged(cursor, columns, import_id)


def _any_stored(cursor: Any, columns: tuple[list[Any], ...], sample: int = 64) -> bool:
    """Whether any of a sample of the rows (first, last, spread between) is already stored."""
    n = len(columns[0])
    picks = sorted({0, n - 1, *np.linspace(0, n - 1, num=min(sample, n), dtype=int).tolist()})
    user, item, event, occurred = columns[0], columns[1], columns[2], columns[4]
    cursor.execute(
        "SELECT EXISTS (SELECT 1 FROM interactions i JOIN unnest("
        "%s::int[], %s::bigint[], %s::int[], %s::text[]) AS k(u, t, it, e)"
        " ON i.user_id = k.u AND i.occurred_at = k.t AND i.item_id = k.it AND i.event_type = k.e)",
        (
            [user[i] for i in picks],
            [occurred[i] for i in picks],
            [item[i] for i in picks],
            [event[i] for i in picks],
        ),
    )
    return bool(cursor.fetchone()[0])


def _copy_direct(cursor: Any, columns: tuple[list[Any], ...], import_id: int) -> int | None:
    """COPY into the table under a savepoint; None when a duplicate aborted it."""
    cursor.execute("SAVEPOINT recsys_direct_copy")
    try:
        with cursor.copy(
            "COPY interactions (user_id, item_id, event_type, value, occurred_at, import_id) "
            "FROM STDIN"
        ) as copy:
            _write_rows(copy, columns, import_id)
    except psycopg.errors.UniqueViolation:
        cursor.execute("ROLLBACK TO SAVEPOINT recsys_direct_copy")
        return None
    cursor.execute("RELEASE SAVEPOINT recsys_direct_copy")
    return len(columns[0])


def _copy_staged(cursor: Any, columns: tuple[list[Any], ...], import_id: int) -> int:
    """COPY into a temporary table, then insert what is not stored yet."""
    cursor.execute(
        "CREATE TEMP TABLE interactions_staging "
        "(user_id integer, item_id integer, event_type varchar(32), value double precision,"
        " occurred_at bigint) ON COMMIT DROP"
    )
    with cursor.copy(
        "COPY interactions_staging (user_id, item_id, event_type, value, occurred_at) FROM STDIN"
    ) as copy:
        _write_rows(copy, columns, None)
    cursor.execute(
        "INSERT INTO interactions (user_id, item_id, event_type, value, occurred_at, import_id)"
        " SELECT user_id, item_id, event_type, value, occurred_at, %s"
        " FROM interactions_staging ON CONFLICT DO NOTHING",
        (import_id,),
    )
    inserted: int = cursor.rowcount
    cursor.execute("DROP TABLE interactions_staging")
    return inserted


def _write_rows(copy: Any, columns: tuple[list[Any], ...], import_id: int | None) -> None:
    """The rows in COPY's text format, ``COPY_ROWS`` to a write (then ``import_id``, if any).

    Formatting the text here costs a third of ``write_row`` per row. Ids, keys and times are
    integers, a value a finite float (its repr reads back exactly) or NULL, and an event type
    is text, escaped. An infinite value goes through ``write_row``, which spells it for the
    server.
    """
    users, items, kinds, values, times = columns
    if any(v is not None and not math.isfinite(v) for v in values):
        tail = () if import_id is None else (import_id,)
        for row in zip(*columns, strict=True):
            copy.write_row((*row, *tail))
        return
    escaped = {k: _copy_text(k) for k in set(kinds)}
    end = "\n" if import_id is None else f"\t{import_id}\n"
    for start in range(0, len(users), COPY_ROWS):
        part = slice(start, start + COPY_ROWS)
        copy.write(
            "".join(
                [
                    f"{u}\t{i}\t{escaped[k]}\t{NULL if v is None else repr(v)}\t{t}{end}"
                    for u, i, k, v, t in zip(
                        users[part],
                        items[part],
                        kinds[part],
                        values[part],
                        times[part],
                        strict=True,
                    )
                ]
            )
        )


def _copy_text(text: str) -> str:
    """``text`` escaped for COPY's text format."""
    for char, escape in (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r")):
        text = text.replace(char, escape)
    return text


def _chunks(rows: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]
