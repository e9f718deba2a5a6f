"""Impressions: the lists the prediction API answered, written in batches.

A response's ``recommendation_id`` is the impression's id; :func:`write_impressions` stores a
batch of them in one statement (the service's log calls it off the request path).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import NamedTuple

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from recsys.db.schema import impressions_table


def new_recommendation_id() -> str:
    """A fresh id for one response (32 hex characters, unguessable)."""
    return os.urandom(16).hex()


def now_ms() -> int:
    return int(time.time() * 1000)


class Impression(NamedTuple):
    """One answered list. ``user_id``, ``session_id`` and ``item_id`` say whom or what it
    was for, by endpoint; ``items`` are external ids, best first; ``shown_at`` epoch ms.

    A named tuple: the request path builds one per response, in about a microsecond.
    """

    id: str
    endpoint: str
    model_version: int
    items: tuple[str, ...]
    shown_at: int
    user_id: str | None = None
    session_id: str | None = None
    item_id: str | None = None
    experiment_id: int | None = None
    arm: str | None = None
    fallback: str | None = None


_COLUMNS = Impression._fields


def write_impressions(engine: Engine, impressions: Sequence[Impression]) -> int:
    """Store a batch in one transaction (one ``executemany`` of plain tuples, the items as
    JSON text); returns how many were written."""
    if not impressions:
        return 0
    mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
    cast = "::jsonb" if engine.dialect.name == "postgresql" else ""
    marks = ", ".join(f"{mark}{cast}" if c == "items" else mark for c in _COLUMNS)
    sql = f"INSERT INTO {impressions_table.name} ({', '.join(_COLUMNS)}) VALUES ({marks})"
    rows = [(*i[:3], json.dumps(i.items), *i[4:]) for i in impressions]
    with engine.begin() as conn:
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(sql, rows)
        except conn.dialect.loaded_dbapi.Error as exc:  # as SQLAlchemy would raise it
            raise DBAPIError.instance(sql, None, exc, conn.dialect.loaded_dbapi.Error) from exc
        finally:
            cursor.close()
    return len(impressions)
