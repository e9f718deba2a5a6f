"""Primary keys of external user and item ids, created where the store lacks them.

Interactions refer to users and items by the store's integer keys. :func:`event_ids` maps a
column of external ids to those keys, inserting the ids the store does not hold yet, inside
the caller's transaction. A :class:`KnownIds` carries the pairs already resolved from one load
to the next (a source sync loads chunk after chunk, mostly of the same users and items):
only ids it lacks are looked up. Keys never change once committed (users and items are never
deleted), so pairs are added to it only after the transaction that made them commits.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from sqlalchemy import Connection, Table

Int64Array = npt.NDArray[np.int64]
# The most pairs a KnownIds keeps per table (about 100 bytes each): past it, it stops growing.
KNOWN_IDS_LIMIT = 2_000_000


@dataclass
class KnownIds:
    """External id -> key pairs of committed users and items, kept across loads."""

    limit: int = KNOWN_IDS_LIMIT
    tables: dict[str, dict[str, int]] = field(default_factory=dict)

    def of(self, table: str) -> dict[str, int]:
        return self.tables.setdefault(table, {})

    def add(self, table: str, pairs: dict[str, int]) -> None:
        """Remember ``pairs`` of ``table`` (call once their transaction has committed)."""
        known = self.of(table)
        room = self.limit - len(known)
        if room >= len(pairs):
            known.update(pairs)
        elif room > 0:
            known.update(dict(list(pairs.items())[:room]))


def event_ids(
    conn: Connection, table: Table, keys: pd.Series, known: dict[str, int] | None = None
) -> tuple[Int64Array, dict[str, int]]:
    """The key of each of ``keys`` (external ids), and the pairs resolved here (not in ``known``).

    Ids the store lacks are inserted; their keys follow the order the ids are first seen when
    the table is empty, else sorted order. Reading every stored id per chunk cost more than
    the chunk's COPY: only the ids asked for, less those ``known``, are read.
    """
    codes, uniques = pd.factorize(keys, use_na_sentinel=False)
    wanted: list[str] = list(uniques.tolist())
    if not wanted:
        return np.empty(0, dtype=np.int64), {}
    # map() over dict lookups runs in C: a Python loop over the ids was a fifth of a sync's
    # own time.
    if known:
        pk = np.fromiter(map(known.get, wanted, itertools.repeat(-1)), np.int64, len(wanted))
        at = np.flatnonzero(pk < 0)
        missing = [wanted[i] for i in at.tolist()]
    else:
        pk = np.full(len(wanted), -1, dtype=np.int64)
        at, missing = np.arange(len(wanted)), wanted
    resolved = _resolve(conn, table, missing) if missing else {}
    if missing:
        pk[at] = np.fromiter(map(resolved.get, missing, itertools.repeat(-1)), np.int64, len(at))
    if (pk < 0).any():
        raise AssertionError("an interaction refers to an id that was not upserted")
    return pk[codes], resolved


def _resolve(conn: Connection, table: Table, wanted: list[str]) -> dict[str, int]:
    """Keys of ``wanted`` (distinct ids), inserting those the table lacks."""
    postgres = conn.dialect.name == "postgresql"
    name = table.name
    raw = conn.connection.driver_connection
    cursor: Any = raw.cursor()  # type: ignore[union-attr]
    try:
        if postgres:
            find = (
                f"SELECT t.external_id, t.id FROM json_array_elements_text(%s::json) AS k(e)"
                f" JOIN {name} t ON t.external_id = k.e"
            )
        else:
            find = (
                f"SELECT external_id, id FROM {name}"
                " WHERE external_id IN (SELECT value FROM json_each(?))"
            )

        def found(ids: list[str]) -> list[tuple[str, int]]:
            # One JSON text for the ids: psycopg builds a text[] in Python, 30x slower.
            cursor.execute(find, (json.dumps(ids, ensure_ascii=False),))
            return list(cursor.fetchall())

        pairs = found(wanted)
        stored = {e for e, _ in pairs}
        fresh = [e for e in wanted if e not in stored]
        if fresh and (pairs or _any_row(cursor, name)):
            fresh.sort()
        if fresh:
            if postgres:
                # Another load may add the same new id meanwhile: theirs stands.
                cursor.execute(
                    f"INSERT INTO {name} (external_id)"
                    " SELECT e FROM json_array_elements_text(%s::json) WITH ORDINALITY AS k(e, n)"
                    " ORDER BY n ON CONFLICT (external_id) DO NOTHING",
                    (json.dumps(fresh, ensure_ascii=False),),
                )
            else:
                cursor.executemany(
                    f"INSERT INTO {name} (external_id) VALUES (?)"
                    " ON CONFLICT (external_id) DO NOTHING",
                    ((e,) for e in fresh),
                )
            pairs += found(fresh)
    finally:
        cursor.close()
    return dict(pairs)


def _any_row(cursor: Any, table: str) -> bool:
    cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {table})")
    return bool(cursor.fetchone()[0])
