"""Extraction: a consistent snapshot of interactions as compact numpy arrays with id maps.

PostgreSQL is read through ADBC (binary COPY into Arrow record batches) in a REPEATABLE READ
transaction; SQLite through the standard driver in one read transaction (WAL gives it a
snapshot), fetching ids packed two to an integer. Either way rows arrive in bounded chunks.
Users and items are indexed ``1..n`` in primary-key order; index 0 is reserved for padding.
The snapshot descriptor (counts, time range, content digest) becomes the lineage of every
model trained on it.

pyarrow is imported by the PostgreSQL reader only, so what trains on a snapshot (splits, the
training loop, ``recsys.experiment``) loads without it.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from recsys.errors import RecsysError

if TYPE_CHECKING:
    import pyarrow as pa
    from sqlalchemy import Engine
    from sqlalchemy.engine import URL

logger = logging.getLogger(__name__)

Int32Array = npt.NDArray[np.int32]
Int64Array = npt.NDArray[np.int64]


@dataclass(frozen=True)
class IdMap:
    """External ids in index order; ``ids[0]`` is the padding slot and never a real id."""

    ids: npt.NDArray[np.object_]

    @classmethod
    def from_ids(cls, ids: list[str] | npt.NDArray[np.object_]) -> IdMap:
        return cls(np.concatenate([np.array([""], dtype=object), np.asarray(ids, dtype=object)]))

    def __len__(self) -> int:
        """Number of real ids (the padding slot excluded)."""
        return len(self.ids) - 1

    def index_of(self, external_ids: list[str] | npt.NDArray[np.object_]) -> Int64Array:
        """Index of each external id, 0 where the id is unknown."""
        lookup = {eid: i for i, eid in enumerate(self.ids[1:], start=1)}
        return np.fromiter((lookup.get(e, 0) for e in external_ids), dtype=np.int64)

    def digest(self) -> str:
        return hashlib.sha256("\x1f".join(map(str, self.ids[1:])).encode()).hexdigest()

    def to_list(self) -> list[str]:
        return [str(i) for i in self.ids[1:]]


@dataclass(frozen=True)
class SnapshotDescriptor:
    """What a snapshot holds: enough to say whether two trainings saw the same data."""

    dialect: str
    extracted_at: str
    after_ms: int | None
    num_interactions: int
    num_users: int
    num_items: int
    catalogue_users: int
    catalogue_items: int
    event_counts: dict[str, int]
    min_occurred_at_ms: int | None
    max_occurred_at_ms: int | None
    max_interaction_id: int | None
    digest: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Snapshot:
    """Events sorted by (user, time, item, event type), one array per column.

    ``event`` holds codes into ``event_types``; ``value`` is NaN where an event has none.
    ``orphans`` counts rows whose user or item row is missing (they are left out);
    ``out_of_order`` is what the imports recorded about events listed out of time order.
    """

    user_idx: Int32Array
    item_idx: Int32Array
    occurred_at: Int64Array
    value: npt.NDArray[np.float32]
    event: npt.NDArray[np.int16]
    event_types: tuple[str, ...]
    users: IdMap
    items: IdMap
    descriptor: SnapshotDescriptor
    out_of_order: int = 0
    orphans: int = 0
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.user_idx)

    @property
    def num_users(self) -> int:
        return len(self.users)

    @property
    def num_items(self) -> int:
        return len(self.items)


EventColumns = dict[str, npt.NDArray[Any]]

# SQLite packs (user_id, item_id) into one 64-bit integer: half the Python objects per row.
_ID_BITS = 32


MS_PER_DAY = 86_400_000


def window_start(days: float | None, now_ms: int | None = None) -> int | None:
    """``after_ms`` for a snapshot of the last ``days`` days (None: every event).

    A training window lets a model follow tastes that move: the gate then compares the
    candidate and the champion on the held-out events of that window.
    """
    if days is None:
        return None
    if days <= 0:
        raise RecsysError(f"a training window must be positive, got {days} days")
    now = int(time.time() * 1000) if now_ms is None else now_ms
    return now - round(days * MS_PER_DAY)


def extract(engine: Engine, *, after_ms: int | None = None, chunk_rows: int = 65_536) -> Snapshot:
    """Read every interaction (or only those after ``after_ms``) in one consistent snapshot.

    The rows come through Arrow-native drivers (sqlite3, ADBC) opened on ``engine``'s
    database, not through SQLAlchemy: one column array per batch instead of Python rows.
    """
    started = time.perf_counter()
    url = engine.url
    backend = url.get_backend_name()
    if backend == "postgresql":
        read = _read_postgres(url, after_ms, chunk_rows)
    elif backend == "sqlite":
        read = _read_sqlite(url, after_ms, chunk_rows)
    else:
        raise RecsysError(f"unsupported database {backend!r}")

    user_idx, user_orphan = _to_index(read.events.pop("user_id"), read.user_pk)
    item_idx, item_orphan = _to_index(read.events.pop("item_id"), read.item_pk)
    keep = ~(user_orphan | item_orphan)
    orphans = int(len(keep) - np.count_nonzero(keep))
    if orphans:
        user_idx, item_idx = user_idx[keep], item_idx[keep]
        read.events = {name: array[keep] for name, array in read.events.items()}
    del keep, user_orphan, item_orphan
    # Canonical order: user, time, then item and event type (the table's unique key).
    # Index order equals primary-key order, so SQLite's index-ordered scan arrives sorted.
    keys = (read.events["event"], item_idx, read.events["occurred_at"], user_idx)
    if not _is_sorted(keys):
        order = np.lexsort(keys)
        user_idx, item_idx = user_idx[order], item_idx[order]
        read.events = {name: array[order] for name, array in read.events.items()}
        del order
    columns = read.events
    del keys

    users, items = IdMap.from_ids(read.user_ids), IdMap.from_ids(read.item_ids)
    event_types = read.event_types
    stamps = columns["occurred_at"]
    counts = np.bincount(columns["event"], minlength=len(event_types))
    descriptor = SnapshotDescriptor(
        dialect=backend,
        extracted_at=datetime.now(UTC).isoformat(timespec="seconds"),
        after_ms=after_ms,
        num_interactions=len(stamps),
        num_users=int(np.count_nonzero(np.bincount(user_idx, minlength=1)[1:])),
        num_items=int(np.count_nonzero(np.bincount(item_idx, minlength=1)[1:])),
        catalogue_users=len(users),
        catalogue_items=len(items),
        event_counts={t: int(c) for t, c in zip(event_types, counts, strict=False)},
        min_occurred_at_ms=int(stamps.min()) if len(stamps) else None,
        max_occurred_at_ms=int(stamps.max()) if len(stamps) else None,
        max_interaction_id=read.max_id,
        digest=_digest(user_idx, item_idx, columns, event_types, users, items),
    )
    seconds = time.perf_counter() - started
    logger.info("extracted %d interactions in %.2fs", len(stamps), seconds)
    return Snapshot(
        user_idx=user_idx,
        item_idx=item_idx,
        occurred_at=stamps,
        value=columns["value"],
        event=columns["event"],
        event_types=event_types,
        users=users,
        items=items,
        descriptor=descriptor,
        out_of_order=read.out_of_order,
        orphans=orphans,
        seconds=seconds,
    )


@dataclass
class _Read:
    """Raw columns of one snapshot as the database returned them (primary keys, not indices)."""

    user_pk: Int64Array
    user_ids: npt.NDArray[np.object_]
    item_pk: Int64Array
    item_ids: npt.NDArray[np.object_]
    events: EventColumns
    event_types: tuple[str, ...]
    max_id: int | None
    out_of_order: int


class _EventCodes:
    """Assigns small integer codes to event-type names as chunks arrive."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}

    def encode(self, names: npt.NDArray[np.object_]) -> npt.NDArray[np.int16]:
        local, uniques = pd.factorize(names)
        mapping = np.array([self.codes.setdefault(str(u), len(self.codes)) for u in uniques])
        return mapping[local].astype(np.int16) if len(names) else np.empty(0, np.int16)

    def sorted(self, codes: npt.NDArray[np.int16]) -> tuple[npt.NDArray[np.int16], tuple[str, ...]]:
        """Recode so that codes follow the names' sorted order (independent of arrival order)."""
        names = sorted(self.codes)
        remap = np.empty(len(names), dtype=np.int16)
        for new, name in enumerate(names):
            remap[self.codes[name]] = new
        return (remap[codes] if len(codes) else codes), tuple(names)


def _read_sqlite(url: URL, after_ms: int | None, chunk_rows: int) -> _Read:
    database = url.database
    if not database or database == ":memory:":
        raise RecsysError("extraction needs a SQLite file, not an in-memory database")
    if not Path(database).exists():
        raise RecsysError(f"database file not found: {database}")
    # isolation_level=None: we issue BEGIN ourselves so every read shares one snapshot.
    connection = sqlite3.connect(database, isolation_level=None)
    try:
        connection.execute("BEGIN")
        user_pk, user_ids = _sqlite_catalogue(connection, "users")
        item_pk, item_ids = _sqlite_catalogue(connection, "items")
        max_id, out_of_order = connection.execute(
            "SELECT (SELECT max(id) FROM interactions),"
            " (SELECT coalesce(sum(rows_out_of_order), 0) FROM imports)"
        ).fetchone()
        where, parameters = (
            ("WHERE occurred_at > ?", (after_ms,)) if after_ms is not None else ("", ())
        )
        cursor = connection.execute(
            f"SELECT (user_id << {_ID_BITS}) | item_id, occurred_at, ifnull(value, 9e999),"
            f" event_type FROM interactions {where}"
            " ORDER BY user_id, occurred_at, item_id, event_type",
            parameters,
        )
        codes = _EventCodes()
        record = np.dtype(
            [("ids", np.int64), ("at", np.int64), ("value", np.float64), ("event", object)]
        )
        parts: dict[str, list[npt.NDArray[Any]]] = {k: [] for k in _COLUMNS}
        while rows := cursor.fetchmany(chunk_rows):
            chunk = np.array(rows, dtype=record)
            del rows
            parts["user_id"].append(chunk["ids"] >> _ID_BITS)
            parts["item_id"].append(chunk["ids"] & ((1 << _ID_BITS) - 1))
            # copy: a view would keep the whole chunk (one str per row) alive
            parts["occurred_at"].append(chunk["at"].copy())
            parts["value"].append(_nan_for_missing(chunk["value"]))
            parts["event"].append(codes.encode(chunk["event"]))
        connection.execute("COMMIT")
    finally:
        connection.close()
    events = _concat(parts)
    events["event"], names = codes.sorted(events["event"])
    return _Read(user_pk, user_ids, item_pk, item_ids, events, names, max_id, int(out_of_order))


def _sqlite_catalogue(
    connection: sqlite3.Connection, table: str
) -> tuple[Int64Array, npt.NDArray[np.object_]]:
    rows = connection.execute(f"SELECT id, external_id FROM {table} ORDER BY id").fetchall()
    pks = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    return pks, np.array([r[1] for r in rows], dtype=object)


def _read_postgres(url: URL, after_ms: int | None, chunk_rows: int) -> _Read:
    import adbc_driver_postgresql.dbapi as pg_dbapi
    import pyarrow.compute as pc

    libpq_url = url.set(drivername="postgresql")
    connection = pg_dbapi.connect(libpq_url.render_as_string(hide_password=False))
    try:
        cursor = connection.cursor()
        # Users, items and events must come from the same moment.
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        user_pk, user_ids = _arrow_catalogue(cursor, "users")
        item_pk, item_ids = _arrow_catalogue(cursor, "items")
        cursor.execute(
            "SELECT (SELECT max(id) FROM interactions) AS max_id,"
            " (SELECT coalesce(sum(rows_out_of_order), 0) FROM imports)::bigint AS out_of_order"
        )
        max_id, out_of_order = cursor.fetchone()
        query = "SELECT user_id, item_id, occurred_at, value, event_type FROM interactions" + (
            " WHERE occurred_at > $1" if after_ms is not None else ""
        )
        cursor.execute(query, parameters=(after_ms,) if after_ms is not None else None)
        codes = _EventCodes()
        parts: dict[str, list[npt.NDArray[Any]]] = {k: [] for k in _COLUMNS}
        for batch in cursor.fetch_record_batch():
            parts["user_id"].append(_numpy(batch.column("user_id")).astype(np.int64))
            parts["item_id"].append(_numpy(batch.column("item_id")).astype(np.int64))
            parts["occurred_at"].append(_numpy(batch.column("occurred_at")).astype(np.int64))
            value = pc.fill_null(batch.column("value"), float("nan"))
            parts["value"].append(_numpy(value).astype(np.float32))
            parts["event"].append(_arrow_event_codes(batch.column("event_type"), codes))
        connection.rollback()
    finally:
        connection.close()
    events = _concat(parts)
    events["event"], names = codes.sorted(events["event"])
    max_id = None if max_id is None else int(max_id)
    return _Read(user_pk, user_ids, item_pk, item_ids, events, names, max_id, int(out_of_order))


def _arrow_catalogue(cursor: Any, table: str) -> tuple[Int64Array, npt.NDArray[np.object_]]:
    cursor.execute(f"SELECT id, external_id FROM {table} ORDER BY id")
    result = cursor.fetch_arrow_table()
    return (
        _numpy(result.column("id")).astype(np.int64),
        np.asarray(result.column("external_id").to_pylist(), dtype=object),
    )


def _arrow_event_codes(column: pa.Array, codes: _EventCodes) -> npt.NDArray[np.int16]:
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(column)
    names = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
    mapping = codes.encode(names) if len(names) else np.empty(0, np.int16)
    codes_of_batch: npt.NDArray[np.int16] = mapping[_numpy(encoded.indices)]
    return codes_of_batch


def _numpy(column: pa.Array | pa.ChunkedArray) -> npt.NDArray[Any]:
    return np.asarray(column.to_numpy(zero_copy_only=False))


def _nan_for_missing(value: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    out = value.astype(np.float32)
    out[~np.isfinite(value)] = np.nan
    return out


_COLUMNS = {
    "user_id": np.int64,
    "item_id": np.int64,
    "occurred_at": np.int64,
    "value": np.float32,
    "event": np.int16,
}


def _concat(parts: dict[str, list[npt.NDArray[Any]]]) -> EventColumns:
    return {
        name: np.concatenate(chunks) if chunks else np.empty(0, dtype=_COLUMNS[name])
        for name, chunks in parts.items()
    }


def _to_index(pk: Int64Array, catalogue_pk: Int64Array) -> tuple[Int32Array, npt.NDArray[np.bool_]]:
    """Map primary keys to 1-based positions in the catalogue; unknown keys are orphans."""
    top = int(catalogue_pk.max()) if len(catalogue_pk) else 0
    # Dense key -> index table: keys are compact integers, so this beats a search.
    lookup = np.zeros(top + 2, dtype=np.int32)
    lookup[catalogue_pk] = np.arange(1, len(catalogue_pk) + 1, dtype=np.int32)
    idx = lookup[np.clip(pk, 0, top + 1)]
    return idx, idx == 0


def _is_sorted(keys: tuple[npt.NDArray[Any], ...]) -> bool:
    """Whether rows are in lexicographic order of ``keys`` (last key most significant)."""
    if len(keys[0]) < 2:
        return True
    ties = np.ones(len(keys[0]) - 1, dtype=bool)
    for key in reversed(keys):
        step = np.diff(key.astype(np.int64))
        if np.any(ties & (step < 0)):
            return False
        ties &= step == 0
    return True


def _digest(
    user_idx: Int32Array,
    item_idx: Int32Array,
    columns: EventColumns,
    event_types: tuple[str, ...],
    users: IdMap,
    items: IdMap,
) -> str:
    """Content hash independent of database keys: same events and ids give the same digest."""
    digest = hashlib.sha256()
    digest.update(users.digest().encode())
    digest.update(items.digest().encode())
    digest.update("\x1f".join(event_types).encode())
    for array in (user_idx, item_idx, columns["occurred_at"], columns["event"], columns["value"]):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()
