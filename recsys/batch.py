"""Batch scoring: top-k for every user through onnxruntime, stored in ``recommendations``.

Histories come from one extracted snapshot, are translated into the artifact's indices and
ranked in batches by :func:`recsys.retrieval.rank_rows` (the item index's candidates when the
artifact has one), under the rules of every ranking (seen and unavailable items excluded, the
training popularity for users the model cannot personalise). The new
lists replace the previous batch in one transaction, so readers see either the old batch or
the new one, never a mix. No torch import.
"""

from __future__ import annotations

import itertools
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
from recsys.retrieval import rank_rows

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


@dataclass(frozen=True)
class Histories:
    """The users to score and what the ranking reads of them, in the artifact's indices.

    ``histories`` row ``r`` is user ``user_ids[r]``'s events in time order (items the artifact
    does not know left out); ``users`` their artifact user indices (0: unknown). Cut into
    parts with :meth:`part`, each scored on its own (in another process or machine).
    """

    user_ids: list[str]
    users: npt.NDArray[np.int64]
    histories: Ragged
    unavailable: npt.NDArray[np.int64]  # item columns never recommended

    def __len__(self) -> int:
        return len(self.user_ids)

    def part(self, start: int, stop: int) -> Histories:
        offsets = self.histories.offsets
        first, last = int(offsets[start]), int(offsets[stop])
        return Histories(
            self.user_ids[start:stop],
            self.users[start:stop],
            Ragged(offsets[start : stop + 1] - first, self.histories.values[first:last]),
            self.unavailable,
        )

    def parts(self, count: int) -> list[Histories]:
        """``count`` parts of nearly equal numbers of users, in order (fewer if few users)."""
        bounds = np.linspace(0, len(self), max(1, min(count, len(self))) + 1).astype(int)
        return [self.part(int(a), int(b)) for a, b in itertools.pairwise(bounds.tolist())]


@dataclass(frozen=True)
class Scored:
    """Top-k item columns and scores of some users, in their order: (U, K) each."""

    top: npt.NDArray[np.int64]
    best: npt.NDArray[np.float32]
    personalised: int

    @staticmethod
    def concat(parts: list[Scored]) -> Scored:
        return Scored(
            np.concatenate([p.top for p in parts]),
            np.concatenate([p.best for p in parts]),
            sum(p.personalised for p in parts),
        )


def prepare(artifact: Artifact, engine: Engine) -> Histories:
    """Every user with events, their histories from one snapshot, and the unavailable items."""
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
    by_user = Ragged.from_groups(
        snapshot.user_idx[keep].astype(np.int32),
        items[keep].astype(np.int32),
        snapshot.num_users + 1,
    )
    active = np.unique(snapshot.user_idx).astype(np.int64)
    user_ids = [snapshot.users.ids[u] for u in active]
    users = np.asarray([artifact.user_index.get(u, 0) for u in user_ids], dtype=np.int64)
    return Histories(user_ids, users, by_user.take(active), unavailable)


def score_histories(artifact: Artifact, users: Histories, k: int, batch_size: int = 256) -> Scored:
    """Top-k of ``users`` under the rules of every ranking, ``batch_size`` rows at a time.

    Rows are scored in order of history length: a batch asks the graph for ``k`` plus its
    longest history candidates (seen items are removed afterwards), so a batch of similar
    histories asks for few. In random order one long history made every batch ask for
    hundreds: at 100,000 items, TopK of 600 took 190 ms of a 1,024-user batch where TopK of
    10 took 23 ms and the scores themselves 182 ms. The answers do not depend on the order.
    For a model whose scores left padding does not change (``padding_invariant``: SASRec), a
    batch's history window is also cut to its longest history, so short histories no longer
    pay for attention over ``max_len`` positions.
    """
    k = min(k, artifact.num_items)
    top = np.zeros((len(users), k), dtype=np.int64)
    best = np.zeros((len(users), k), dtype=np.float32)
    personalised = 0
    histories = users.histories
    offsets = histories.offsets
    lengths = np.diff(offsets)
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(users), batch_size):
        which = order[start : start + batch_size]
        counts = lengths[which]
        seen = histories.take(which).values.astype(np.int64)
        window = artifact.max_len
        if artifact.padding_invariant:  # no wider than the longest history of the batch
            window = max(1, min(window, int(counts.max(initial=0))))
        history = left_padded(histories, which, window)  # (B, L)
        columns, values, personal = rank_rows(
            artifact, history, users.users[which], counts, seen, k, users.unavailable
        )
        personalised += int(personal.sum())
        top[which] = columns
        best[which] = values
    return Scored(top, best, personalised)


def score_all(
    artifact: Artifact, engine: Engine, k: int, batch_size: int = 256
) -> tuple[list[str], npt.NDArray[np.int64], npt.NDArray[np.float32], int]:
    """Top-k item columns and scores for every user with events: (U,), (U, K), (U, K)."""
    users = prepare(artifact, engine)
    scored = score_histories(artifact, users, k, batch_size)
    return users.user_ids, scored.top, scored.best, scored.personalised


def batch_recommend(
    engine: Engine, artifact: Artifact, *, k: int = 10, batch_size: int = 256
) -> BatchResult:
    """Score every user in this process and replace the ``recommendations`` table atomically."""
    started = time.perf_counter()
    users = prepare(artifact, engine)
    scored = score_histories(artifact, users, k, batch_size)
    return store_batch(engine, artifact, users.user_ids, scored, time.perf_counter() - started)


def store_batch(
    engine: Engine,
    artifact: Artifact,
    user_ids: list[str],
    scored: Scored,
    score_seconds: float,
) -> BatchResult:
    """Replace the ``recommendations`` table's contents with ``scored`` in one transaction:
    readers see the old batch or the new one, never a mix (and a retried part adds nothing)."""
    started = time.perf_counter()
    batch_id = uuid.uuid4().hex
    now = datetime.now(UTC)
    item_ids = artifact.item_ids
    rows = [
        (user_id, rank, item_ids[column], score, artifact.version, batch_id, now)
        for user_id, columns, scores in zip(
            user_ids, scored.top.tolist(), scored.best.tolist(), strict=True
        )
        for rank, (column, score) in enumerate(zip(columns, scores, strict=True), start=1)
        if score != float("-inf")
    ]
    with engine.begin() as conn:
        conn.execute(delete(recommendations_table))
        _insert_rows(conn, rows)
    logger.info("batch %s: %d users, %d rows", batch_id, len(user_ids), len(rows))
    return BatchResult(
        batch_id=batch_id,
        model_version=artifact.version,
        users=len(user_ids),
        rows=len(rows),
        personalised=scored.personalised,
        score_seconds=score_seconds,
        write_seconds=time.perf_counter() - started,
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
