"""Batch scoring: top-k for every user through onnxruntime, stored in ``recommendations``.

Histories come from one extracted snapshot, are translated into the artifact's indices and
ranked in batches by :func:`recsys.ranking.rank_rows`, under the rules of every ranking (seen
and unavailable items excluded, the training popularity for users the model cannot
personalise). The new
lists replace the previous batch in one transaction, so readers see either the old batch or
the new one, never a mix. No torch import.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, Engine, delete

from recsys.artifacts import Artifact
from recsys.data.extract import extract
from recsys.data.splits import Ragged, left_padded
from recsys.db.catalogue import unavailable_items
from recsys.db.schema import recommendations_table
from recsys.ranking import rank_rows

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchResult:
    batch_id: str
    model_version: int
    users: int
    rows: int
    personalised: int
    score_seconds: float
    write_seconds: float

    @property
    def users_per_second(self) -> float:
        return self.users / max(self.score_seconds + self.write_seconds, 1e-9)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["users_per_second"] = round(self.users_per_second, 1)
        return out


def score_all(
    artifact: Artifact, engine: Engine, k: int, batch_size: int = 256
) -> tuple[list[str], npt.NDArray[np.int64], npt.NDArray[np.float32], int]:
    """Top-k item columns and scores for every user with events: (U,), (U, K), (U, K)."""
    snapshot = extract(engine)
    index = artifact.item_index
    unavailable = np.asarray(
        sorted(index[i] - 1 for i in unavailable_items(engine) if i in index), dtype=np.int64
    )
    to_art = np.asarray(
        [0, *(artifact.item_index.get(i, 0) for i in snapshot.items.to_list())], dtype=np.int64
    )
    items = to_art[snapshot.item_idx]  # events in (user, time) order, artifact indices
    keep = items > 0
    histories = Ragged.from_groups(
        snapshot.user_idx[keep].astype(np.int32),
        items[keep].astype(np.int32),
        snapshot.num_users + 1,
    )
    active = np.unique(snapshot.user_idx)
    user_ids = [snapshot.users.ids[u] for u in active]
    user_art = np.asarray([artifact.user_index.get(u, 0) for u in user_ids], dtype=np.int64)
    k = min(k, artifact.num_items)
    top = np.zeros((len(active), k), dtype=np.int64)
    best = np.zeros((len(active), k), dtype=np.float32)
    personalised = 0
    offsets = histories.offsets
    for start in range(0, len(active), batch_size):
        which = active[start : start + batch_size].astype(np.int64)
        counts = offsets[which + 1] - offsets[which]
        # Every row's whole history, row after row: the items to exclude as seen.
        within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        seen = histories.values[np.repeat(offsets[which], counts) + within].astype(np.int64)
        history = left_padded(histories, which, artifact.max_len)  # (B, L)
        users = user_art[start : start + batch_size]
        columns, values, personal = rank_rows(
            artifact, history, users, counts, seen, k, unavailable
        )
        personalised += int(personal.sum())
        top[start : start + len(which)] = columns
        best[start : start + len(which)] = values
    return user_ids, top, best, personalised


def batch_recommend(
    engine: Engine, artifact: Artifact, *, k: int = 10, batch_size: int = 256
) -> BatchResult:
    """Score every user and replace the ``recommendations`` table's contents atomically."""
    started = time.perf_counter()
    user_ids, top, best, personalised = score_all(artifact, engine, k, batch_size)
    scored = time.perf_counter()
    batch_id = uuid.uuid4().hex
    now = datetime.now(UTC)
    item_ids = artifact.item_ids
    rows = [
        (user_id, rank, item_ids[column], score, artifact.version, batch_id, now)
        for user_id, columns, scores in zip(user_ids, top.tolist(), best.tolist(), strict=True)
        for rank, (column, score) in enumerate(zip(columns, scores, strict=True), start=1)
        if score != float("-inf")
    ]
    with engine.begin() as conn:
        conn.execute(delete(recommendations_table))
        _insert_rows(conn, rows)
    written = time.perf_counter()
    logger.info("batch %s: %d users, %d rows", batch_id, len(user_ids), len(rows))
    return BatchResult(
        batch_id=batch_id,
        model_version=artifact.version,
        users=len(user_ids),
        rows=len(rows),
        personalised=personalised,
        score_seconds=scored - started,
        write_seconds=written - scored,
    )


COLUMNS = ("user_id", "rank", "item_id", "score", "model_version", "batch_id", "created_at")


def _insert_rows(conn: Connection, rows: list[tuple[Any, ...]]) -> None:
    """Bulk insert: COPY on PostgreSQL, one executemany on SQLite (inside the caller's
    transaction either way, so the swap stays atomic)."""
    if conn.dialect.name == "postgresql":
        cursor: Any = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        with cursor.copy(f"COPY recommendations ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    placeholders = ", ".join("?" for _ in COLUMNS)
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    # SQLAlchemy's own SQLite DATETIME text (UTC, no offset), so the ORM reads it back.
    stamp = rows[0][-1].strftime("%Y-%m-%d %H:%M:%S.%f") if rows else None
    cursor.executemany(
        f"INSERT INTO recommendations ({', '.join(COLUMNS)}) VALUES ({placeholders})",
        ((*row[:-1], stamp) for row in rows),
    )
    cursor.close()
