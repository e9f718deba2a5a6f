"""Extraction: a consistent snapshot of interactions as compact numpy arrays with id maps.

Reads go through ADBC (Arrow-native drivers for SQLite and PostgreSQL) in record batches, so
10M events never exist as Python objects. Users and items are indexed ``1..n`` in primary-key
order; index 0 is reserved for padding. The snapshot descriptor (counts, time range, content
digest) becomes the lineage of every model trained on it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy.engine import make_url

from recsys.db.engine import normalize_url
from recsys.errors import RecsysError

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
    """Events sorted by (user, time, insertion order), one array per column.

    ``event`` holds codes into ``event_types``; ``value`` is NaN where an event has none.
    ``orphans`` counts rows whose user or item row is missing (they are left out).
    """

    user_idx: Int32Array
    item_idx: Int32Array
    occurred_at: Int64Array
    value: npt.NDArray[np.float32]
    event: npt.NDArray[np.int16]
    import_id: Int32Array
    event_types: tuple[str, ...]
    users: IdMap
    items: IdMap
    descriptor: SnapshotDescriptor
    out_of_order: int = 0
    orphans: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.user_idx)

    @property
    def num_users(self) -> int:
        return len(self.users)

    @property
    def num_items(self) -> int:
        return len(self.items)


def adbc_connect(url: str) -> Any:
    """An ADBC DB-API connection for a SQLAlchemy URL (transactions on, like PEP 249)."""
    parsed = make_url(normalize_url(url))
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        import adbc_driver_sqlite.dbapi as sqlite_dbapi

        if not parsed.database or parsed.database == ":memory:":
            raise RecsysError("extraction needs a SQLite file, not an in-memory database")
        return sqlite_dbapi.connect(parsed.database)
    if backend == "postgresql":
        import adbc_driver_postgresql.dbapi as pg_dbapi

        return pg_dbapi.connect(parsed.set(drivername="postgresql").render_as_string(False))
    raise RecsysError(f"unsupported database {backend!r}")


def extract(url: str, *, after_ms: int | None = None, batch_rows: int = 262_144) -> Snapshot:
    """Read every interaction (or only those after ``after_ms``) in one consistent snapshot."""
    started = time.perf_counter()
    backend = make_url(normalize_url(url)).get_backend_name()
    connection = adbc_connect(url)
    try:
        cursor = connection.cursor()
        if backend == "postgresql":
            # Users, items and events must come from the same moment.
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        user_pk, user_ids = _catalogue(cursor, "users")
        item_pk, item_ids = _catalogue(cursor, "items")
        events, event_types = _read_events(cursor, after_ms, batch_rows)
        connection.rollback()
    finally:
        connection.close()

    user_idx, user_orphan = _to_index(events.pop("user_id"), user_pk)
    item_idx, item_orphan = _to_index(events.pop("item_id"), item_pk)
    keep = ~(user_orphan | item_orphan)
    orphans = int(len(keep) - keep.sum())
    row_id = events.pop("id")
    out_of_order = _count_out_of_order(
        user_idx[keep], events["import_id"][keep], events["occurred_at"][keep], row_id[keep]
    )
    # Canonical order: by user, then time, then insertion order.
    order = np.flatnonzero(keep)[
        np.lexsort((row_id[keep], events["occurred_at"][keep], user_idx[keep]))
    ]
    max_id = int(row_id.max()) if len(row_id) else None
    del row_id, keep
    user_idx, item_idx = user_idx[order], item_idx[order]
    columns = {name: array[order] for name, array in events.items()}
    del order, events

    users, items = IdMap.from_ids(user_ids), IdMap.from_ids(item_ids)
    stamps = columns["occurred_at"]
    counts = np.bincount(columns["event"], minlength=len(event_types))
    descriptor = SnapshotDescriptor(
        dialect=backend,
        extracted_at=datetime.now(UTC).isoformat(timespec="seconds"),
        after_ms=after_ms,
        num_interactions=len(stamps),
        num_users=int(np.count_nonzero(np.bincount(user_idx, minlength=1))),
        num_items=int(np.count_nonzero(np.bincount(item_idx, minlength=1))),
        catalogue_users=len(users),
        catalogue_items=len(items),
        event_counts={t: int(c) for t, c in zip(event_types, counts, strict=False)},
        min_occurred_at_ms=int(stamps.min()) if len(stamps) else None,
        max_occurred_at_ms=int(stamps.max()) if len(stamps) else None,
        max_interaction_id=max_id,
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
        import_id=columns["import_id"],
        event_types=event_types,
        users=users,
        items=items,
        descriptor=descriptor,
        out_of_order=out_of_order,
        orphans=orphans,
        seconds=seconds,
    )


EventColumns = dict[str, npt.NDArray[Any]]


def _catalogue(cursor: Any, table: str) -> tuple[Int64Array, npt.NDArray[np.object_]]:
    cursor.execute(f"SELECT id, external_id FROM {table} ORDER BY id")
    result = cursor.fetch_arrow_table()
    return (
        result.column("id").to_numpy().astype(np.int64),
        np.asarray(result.column("external_id").to_pylist(), dtype=object),
    )


def _read_events(
    cursor: Any, after_ms: int | None, batch_rows: int
) -> tuple[EventColumns, tuple[str, ...]]:
    """Stream the interactions table batch by batch into typed numpy columns."""
    # SQLite types each batch from its values, so NULLs are replaced by typed sentinels
    # (an infinite value, import 0) to keep every batch's schema the same.
    postgres = _is_postgres(cursor)
    missing = "'Infinity'::float8" if postgres else "9e999"
    query = (
        f"SELECT id, user_id, item_id, occurred_at, COALESCE(value, {missing}) AS value,"
        " event_type, COALESCE(import_id, 0) AS import_id FROM interactions"
    )
    parameters: tuple[int, ...] = ()
    if after_ms is not None:
        query += " WHERE occurred_at > " + ("$1" if postgres else "?")
        parameters = (after_ms,)
    if not postgres:
        cursor.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(batch_rows)})
    cursor.execute(query, parameters=parameters or None)
    codes: dict[str, int] = {}
    parts: dict[str, list[npt.NDArray[Any]]] = {
        k: [] for k in ("id", "user_id", "item_id", "occurred_at", "value", "event", "import_id")
    }
    for batch in cursor.fetch_record_batch():
        parts["id"].append(_ints(batch.column("id"), np.int64))
        parts["user_id"].append(_ints(batch.column("user_id"), np.int64))
        parts["item_id"].append(_ints(batch.column("item_id"), np.int64))
        parts["occurred_at"].append(_ints(batch.column("occurred_at"), np.int64))
        parts["import_id"].append(_ints(batch.column("import_id"), np.int32))
        value = batch.column("value").to_numpy(zero_copy_only=False).astype(np.float32)
        value[~np.isfinite(value)] = np.nan
        parts["value"].append(value)
        parts["event"].append(_event_codes(batch.column("event_type"), codes))
    columns: EventColumns = {
        name: np.concatenate(chunks) if chunks else np.empty(0, dtype=_EMPTY_DTYPES[name])
        for name, chunks in parts.items()
    }
    return columns, tuple(codes)


_EMPTY_DTYPES = {
    "id": np.int64,
    "user_id": np.int64,
    "item_id": np.int64,
    "occurred_at": np.int64,
    "value": np.float32,
    "event": np.int16,
    "import_id": np.int32,
}


def _is_postgres(cursor: Any) -> bool:
    return "postgres" in str(cursor.connection.adbc_get_info().get("vendor_name", "")).lower()


def _ints(column: pa.Array, dtype: type[np.generic]) -> npt.NDArray[Any]:
    return column.to_numpy(zero_copy_only=False).astype(dtype, copy=False)


def _event_codes(column: pa.Array, codes: dict[str, int]) -> npt.NDArray[np.int16]:
    encoded = pc.dictionary_encode(column)
    local = np.array(
        [codes.setdefault(str(name), len(codes)) for name in encoded.dictionary.to_pylist()],
        dtype=np.int16,
    )
    return local[encoded.indices.to_numpy(zero_copy_only=False)]


def _to_index(pk: Int64Array, catalogue_pk: Int64Array) -> tuple[Int32Array, npt.NDArray[np.bool_]]:
    """Map primary keys to 1-based positions in the catalogue; unknown keys are orphans."""
    position = np.searchsorted(catalogue_pk, pk)
    clipped = np.minimum(position, max(len(catalogue_pk) - 1, 0))
    found = (catalogue_pk[clipped] == pk) if len(catalogue_pk) else np.zeros(len(pk), dtype=bool)
    return np.where(found, position + 1, 0).astype(np.int32), ~found


def _count_out_of_order(
    user_idx: Int32Array, import_id: Int32Array, occurred_at: Int64Array, row_id: Int64Array
) -> int:
    """Events that an import wrote after a later event of the same user (time went back)."""
    if len(row_id) < 2:
        return 0
    order = np.lexsort((row_id, user_idx, import_id))
    same = (np.diff(import_id[order]) == 0) & (np.diff(user_idx[order]) == 0)
    went_back = np.diff(occurred_at[order]) < 0
    return int(np.count_nonzero(same & went_back & (import_id[order][1:] != 0)))


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


def iter_chunks(snapshot: Snapshot, size: int) -> Iterator[slice]:
    """Slices over a snapshot's rows, for consumers that stream it."""
    for start in range(0, len(snapshot), size):
        yield slice(start, start + size)
