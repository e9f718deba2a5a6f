"""Writing a batch's events: as columns in insert order, then the fastest path per database.

PostgreSQL streams them with ``COPY`` in its binary format, straight into ``interactions``
when none of them is stored yet, else into a temporary table followed by ``INSERT ... ON
CONFLICT DO NOTHING``; SQLite runs ``INSERT OR IGNORE`` statements of many rows. Either way a
row already stored is skipped. :mod:`recsys.data.load` calls these inside its transaction.
"""

from __future__ import annotations

import itertools
import math
import sqlite3
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import psycopg
from sqlalchemy import Connection

SQLITE_BULK_CACHE_KIB = 512 * 1024
# Rows per INSERT statement into SQLite (fewer where its limit on parameters is lower).
SQLITE_ROWS_PER_INSERT = 5_000
# Rows per write of COPY data; the binary format's signature (no flags, no extension) and end.
COPY_ROWS = 10_000
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
COPY_TRAILER = b"\xff\xff"


@dataclass(frozen=True)
class EventColumns:
    """A batch's events in insert order: store keys, event types, values (NaN: none), times."""

    user: npt.NDArray[np.int64]
    item: npt.NDArray[np.int64]
    kind: npt.NDArray[np.object_]
    value: npt.NDArray[np.float64]
    time: npt.NDArray[np.int64]
    lists: tuple[list[Any], ...] | None = None  # as_lists(), made ahead (see with_lists)

    def __len__(self) -> int:
        return len(self.user)

    def with_lists(self) -> EventColumns:
        """The same columns holding :meth:`as_lists` made now (SQLite's inserts take lists:
        a sync makes them in its preparing thread, not in the one writing)."""
        return replace(self, lists=self.as_lists())

    def as_lists(self) -> tuple[list[Any], ...]:
        """One list of Python values per column (a missing value is None)."""
        if self.lists is not None:
            return self.lists
        value = self.value
        return (
            self.user.tolist(),
            self.item.tolist(),
            self.kind.tolist(),
            [None] * len(value)
            if np.isnan(value).all()
            else [None if math.isnan(v) else v for v in value.tolist()],
            self.time.tolist(),
        )


def event_columns(events: pd.DataFrame, user_pk: np.ndarray, item_pk: np.ndarray) -> EventColumns:
    """The events with their store keys, in the order they are inserted."""
    # (user, time, item) order: the unique and per-user indexes then grow mostly at the end,
    # and two loads at once that share rows meet them in the same order (neither holds a row
    # the other waits for while waiting for one the other holds).
    times = events["occurred_at"].to_numpy(dtype=np.int64)
    order = np.lexsort((item_pk, times, user_pk))
    return EventColumns(
        user=np.asarray(user_pk, dtype=np.int64)[order],
        item=np.asarray(item_pk, dtype=np.int64)[order],
        kind=events["event_type"].to_numpy(dtype=object)[order],
        value=events["value"].to_numpy(dtype=np.float64, na_value=np.nan)[order],
        time=times[order],
    )


def insert_interactions(conn: Connection, columns: EventColumns, import_id: int) -> int:
    if not len(columns):
        return 0
    if conn.dialect.name == "postgresql":
        return _copy_postgres(conn, columns, import_id)
    return _executemany_sqlite(conn, columns.as_lists(), import_id)


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


def _copy_postgres(conn: Connection, columns: EventColumns, import_id: int) -> int:
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


def _any_stored(cursor: Any, columns: EventColumns, sample: int = 64) -> bool:
    """Whether any of a sample of the rows (first, last, spread between) is already stored."""
    n = len(columns)
    picks = np.unique(np.r_[0, n - 1, np.linspace(0, n - 1, num=min(sample, n), dtype=np.int64)])
    cursor.execute(
        "SELECT EXISTS (SELECT 1 FROM interactions i JOIN unnest("
        "%s::int[], %s::bigint[], %s::int[], %s::text[]) AS k(u, t, it, e)"
        " ON i.user_id = k.u AND i.occurred_at = k.t AND i.item_id = k.it AND i.event_type = k.e)",
        (
            columns.user[picks].tolist(),
            columns.time[picks].tolist(),
            columns.item[picks].tolist(),
            columns.kind[picks].tolist(),
        ),
    )
    return bool(cursor.fetchone()[0])


def _copy_direct(cursor: Any, columns: EventColumns, import_id: int) -> int | None:
    """COPY into the table under a savepoint; None when a duplicate aborted it."""
    cursor.execute("SAVEPOINT recsys_direct_copy")
    try:
        with cursor.copy(
            "COPY interactions (user_id, item_id, event_type, value, occurred_at, import_id) "
            "FROM STDIN (FORMAT BINARY)"
        ) as copy:
            _write_binary(copy, columns, import_id)
    except psycopg.errors.UniqueViolation:
        cursor.execute("ROLLBACK TO SAVEPOINT recsys_direct_copy")
        return None
    cursor.execute("RELEASE SAVEPOINT recsys_direct_copy")
    return len(columns)


def _copy_staged(cursor: Any, columns: EventColumns, import_id: int) -> int:
    """COPY into a temporary table, then insert what is not stored yet."""
    cursor.execute(
        "CREATE TEMP TABLE interactions_staging "
        "(user_id integer, item_id integer, event_type varchar(32), value double precision,"
        " occurred_at bigint) ON COMMIT DROP"
    )
    with cursor.copy(
        "COPY interactions_staging (user_id, item_id, event_type, value, occurred_at)"
        " FROM STDIN (FORMAT BINARY)"
    ) as copy:
        _write_binary(copy, columns, None)
    cursor.execute(
        "INSERT INTO interactions (user_id, item_id, event_type, value, occurred_at, import_id)"
        " SELECT user_id, item_id, event_type, value, occurred_at, %s"
        " FROM interactions_staging ON CONFLICT DO NOTHING",
        (import_id,),
    )
    inserted: int = cursor.rowcount
    cursor.execute("DROP TABLE interactions_staging")
    return inserted


def _write_binary(copy: Any, columns: EventColumns, import_id: int | None) -> None:
    """The rows in COPY's binary format (then ``import_id``, if any), built by numpy.

    Each tuple is a field count and, per field, a length (-1: NULL) and big-endian bytes. Rows
    of one event type and with (or without) a value share one layout, so each such group is
    one structured array; groups go in a fixed order (event type, then without a value
    first), rows within a group in insert order. Formatting COPY's text per row in Python
    cost half of this side's time, and the server parses the binary fields for less.
    """
    copy.write(COPY_SIGNATURE)
    present = ~np.isnan(columns.value)
    kinds, codes = np.unique(columns.kind.astype(str), return_inverse=True)
    for code, kind in enumerate(kinds.tolist()):
        of_kind = codes == code
        for with_value in (False, True):
            rows = np.flatnonzero(of_kind & (present == with_value))
            if len(rows):
                records = _records(columns, rows, kind.encode(), with_value, import_id)
                for start in range(0, len(records), COPY_ROWS):
                    copy.write(records[start : start + COPY_ROWS].tobytes())
    copy.write(COPY_TRAILER)


def _records(
    columns: EventColumns, rows: np.ndarray, kind: bytes, with_value: bool, import_id: int | None
) -> np.ndarray:
    """``rows`` of ``columns`` as binary COPY tuples of one layout (one event type)."""
    fields: list[tuple[str, str]] = [("count", ">i2")]
    for name, kind_code in (("user", ">i4"), ("item", ">i4"), ("kind", f"S{len(kind)}")):
        fields += [(f"{name}_length", ">i4"), (name, kind_code)]
    fields.append(("value_length", ">i4"))
    if with_value:
        fields.append(("value", ">f8"))
    fields += [("time_length", ">i4"), ("time", ">i8")]
    if import_id is not None:
        fields += [("import_length", ">i4"), ("import", ">i4")]
    out = np.empty(len(rows), dtype=np.dtype(fields))
    out["count"] = 5 if import_id is None else 6
    out["user_length"], out["user"] = 4, columns.user[rows]
    out["item_length"], out["item"] = 4, columns.item[rows]
    out["kind_length"], out["kind"] = len(kind), kind
    out["value_length"] = 8 if with_value else -1
    if with_value:
        out["value"] = columns.value[rows]
    out["time_length"], out["time"] = 8, columns.time[rows]
    if import_id is not None:
        out["import_length"], out["import"] = 4, import_id
    return out
