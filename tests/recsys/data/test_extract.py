"""Extraction: consistent arrays and id maps, watermarks, digests that ignore database keys."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sqlalchemy import Engine, text

from recsys.data.extract import IdMap, extract
from recsys.data.frames import ImportBatch
from recsys.data.load import load_batch
from recsys.data.synthetic import SyntheticConfig, generate
from recsys.db.engine import create_engine


def _batch(rows: list[tuple[str, str, str, float, int]], kind: str = "t") -> ImportBatch:
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "value", "occurred_at"])
    frame = frame.astype({"user_id": object, "item_id": object, "event_type": object})
    frame["occurred_at"] = frame["occurred_at"].astype(np.int64)
    frame["value"] = frame["value"].astype(np.float64)
    return ImportBatch(kind=kind, source=kind, interactions=frame, rows_read=len(frame))


ROWS = [
    ("bob", "x", "view", np.nan, 3_000),
    ("alice", "y", "rating", 4.0, 2_000),
    ("alice", "x", "view", np.nan, 1_000),
    ("bob", "z", "purchase", 12.5, 4_000),
]


def test_extract_arrays_sorted_by_user_then_time(engine: Engine, database_url: str) -> None:
    load_batch(engine, _batch(ROWS))
    snap = extract(create_engine(database_url))
    assert len(snap) == 4
    assert snap.users.to_list() == ["bob", "alice"]  # index order = first seen (primary key)
    users = snap.users.ids[snap.user_idx]
    items = snap.items.ids[snap.item_idx]
    assert list(zip(users, items, strict=True)) == [
        ("bob", "x"),
        ("bob", "z"),
        ("alice", "x"),
        ("alice", "y"),
    ]
    assert snap.occurred_at.tolist() == [3_000, 4_000, 1_000, 2_000]
    assert snap.user_idx.dtype == np.int32 and snap.item_idx.dtype == np.int32
    assert snap.user_idx.min() >= 1 and snap.item_idx.min() >= 1  # 0 is padding
    assert snap.event_types == ("purchase", "rating", "view")  # sorted: codes are canonical
    events = [snap.event_types[e] for e in snap.event]
    assert events == ["view", "purchase", "view", "rating"]
    np.testing.assert_array_equal(snap.value, np.array([np.nan, 12.5, np.nan, 4.0], np.float32))


def test_extract_descriptor_counts_and_time_range(engine: Engine, database_url: str) -> None:
    load_batch(engine, _batch(ROWS))
    d = extract(create_engine(database_url)).descriptor
    assert (d.num_interactions, d.num_users, d.num_items) == (4, 2, 3)
    assert d.event_counts == {"purchase": 1, "rating": 1, "view": 2}
    assert (d.min_occurred_at_ms, d.max_occurred_at_ms) == (1_000, 4_000)
    assert d.max_interaction_id is not None and d.max_interaction_id >= 4
    assert len(d.digest) == 64


def test_extract_after_watermark_only_newer_events(engine: Engine, database_url: str) -> None:
    load_batch(engine, _batch(ROWS))
    snap = extract(create_engine(database_url), after_ms=2_500)
    assert sorted(snap.occurred_at.tolist()) == [3_000, 4_000]
    assert snap.descriptor.after_ms == 2_500
    assert len(snap.items) == 3  # id maps always cover the whole catalogue


def test_extract_digest_depends_on_content_not_keys(engine: Engine, database_url: str) -> None:
    load_batch(engine, _batch(ROWS))
    first = extract(create_engine(database_url)).descriptor.digest
    load_batch(engine, _batch(ROWS))  # a no-op re-import under a new import id
    assert extract(create_engine(database_url)).descriptor.digest == first
    load_batch(engine, _batch([("carol", "x", "view", np.nan, 5_000)]))
    assert extract(create_engine(database_url)).descriptor.digest != first


def test_extract_small_batches_give_the_same_snapshot(engine: Engine, database_url: str) -> None:
    batch = generate(SyntheticConfig(num_users=200, num_items=100, num_interactions=5_000, seed=3))
    load_batch(engine, batch)
    whole = extract(create_engine(database_url))
    chunked = extract(create_engine(database_url), chunk_rows=333)
    assert chunked.descriptor.digest == whole.descriptor.digest
    np.testing.assert_array_equal(chunked.item_idx, whole.item_idx)
    assert len(whole) == 5_000
    assert (
        whole.descriptor.event_counts == batch.interactions["event_type"].value_counts().to_dict()
    )


def test_extract_counts_out_of_order_rows_within_an_import(
    engine: Engine, database_url: str
) -> None:
    load_batch(
        engine, _batch([("u", "a", "view", np.nan, 5_000), ("u", "b", "view", np.nan, 1_000)])
    )
    assert extract(create_engine(database_url)).out_of_order == 1


def test_extract_reports_and_drops_orphan_rows(engine: Engine, database_url: str) -> None:
    load_batch(engine, _batch(ROWS))
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO interactions (user_id, item_id, event_type, occurred_at)"
                " VALUES (999, 1, 'view', 1)"
            )
        )
    snap = extract(create_engine(database_url))
    assert snap.orphans == 1 and len(snap) == 4


def test_id_map_lookup_and_digest() -> None:
    ids = IdMap.from_ids(["a", "b"])
    assert len(ids) == 2
    assert ids.index_of(["b", "zzz", "a"]).tolist() == [2, 0, 1]
    assert (
        ids.digest() == IdMap.from_ids(["a", "b"]).digest() != IdMap.from_ids(["b", "a"]).digest()
    )
