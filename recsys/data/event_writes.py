"""Writing a batch's events: as lists of Python values, then the fastest path per database.

PostgreSQL streams them with ``COPY``, straight into ``interactions`` when none of them is
stored yet, else into a temporary table followed by ``INSERT ... ON CONFLICT DO NOTHING``;
SQLite runs ``INSERT OR IGNORE`` statements of many rows. Either way a row already stored is
skipped. :mod:`recsys.data.load` calls these inside its transaction.
"""

from __future__ import annotations

import itertools
import math
import sqlite3
from typing import Any

import numpy as np
import pandas as pd
import psycopg
from sqlalchemy import Connection

SQLITE_BULK_CACHE_KIB = 512 * 1024
# Rows per INSERT statement into SQLite (fewer where its limit on parameters is lower).
SQLITE_ROWS_PER_INSERT = 5_000
# Rows per write of COPY text, and how COPY's text format spells NULL.
COPY_ROWS = 10_000
NULL = "\\N"


def event_columns(
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


def insert_interactions(conn: Connection, columns: tuple[list[Any], ...], import_id: int) -> int:
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
