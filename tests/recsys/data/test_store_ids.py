"""External ids to keys: what a KnownIds remembers across loads, and only after a commit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine, select

import recsys.data.load as load_module
from recsys.data.frames import ImportBatch
from recsys.data.load import load_batch
from recsys.data.store_ids import KnownIds
from recsys.db.schema import interactions_table, items_table, users_table


def _batch(rows: list[tuple[str, str, int]]) -> ImportBatch:
    frame = pd.DataFrame(
        {
            "user_id": pd.Series([u for u, _, _ in rows], dtype=object),
            "item_id": pd.Series([i for _, i, _ in rows], dtype=object),
            "event_type": pd.Series(["view"] * len(rows), dtype=object),
            "value": pd.Series([np.nan] * len(rows), dtype=np.float64),
            "occurred_at": pd.Series([t for _, _, t in rows], dtype=np.int64),
        }
    )
    return ImportBatch(kind="t", source="t", interactions=frame, rows_read=len(rows))


def _keys(engine: Engine, table: object) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(select(table.c.external_id, table.c.id)).all()  # type: ignore[attr-defined]
    return {e: k for e, k in rows}


def _stored_pairs(engine: Engine) -> set[tuple[int, int, int]]:
    t = interactions_table.c
    with engine.connect() as conn:
        return {tuple(r) for r in conn.execute(select(t.user_id, t.item_id, t.occurred_at))}


def test_known_ids_fill_after_each_load_and_give_the_stored_keys(engine: Engine) -> None:
    known = KnownIds()
    load_batch(engine, _batch([("u1", "i1", 1), ("u2", "i2", 2)]), known=known)
    assert known.of("users") == _keys(engine, users_table)
    assert known.of("items") == _keys(engine, items_table)
    # The next chunk mixes known and new ids: every event gets its own user's and item's key.
    load_batch(engine, _batch([("u2", "i1", 3), ("u3", "i2", 4), ("u1", "i3", 5)]), known=known)
    users, items = _keys(engine, users_table), _keys(engine, items_table)
    assert known.of("users") == users and known.of("items") == items
    expected = {
        (users[u], items[i], t)
        for u, i, t in [("u1", "i1", 1), ("u2", "i2", 2), ("u2", "i1", 3), ("u3", "i2", 4),
                        ("u1", "i3", 5)]
    }  # fmt: skip
    assert _stored_pairs(engine) == expected


def test_a_failed_load_leaves_known_ids_as_they_were(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    known = KnownIds()
    load_batch(engine, _batch([("u1", "i1", 1)]), known=known)
    before = {table: dict(pairs) for table, pairs in known.tables.items()}

    def fail(*args: object, **kwargs: object) -> int:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(load_module, "insert_interactions", fail)
    with pytest.raises(RuntimeError):
        load_batch(engine, _batch([("u9", "i9", 2), ("u1", "i1", 3)]), known=known)
    assert known.tables == before  # u9 and i9 were rolled back: not remembered
    monkeypatch.undo()
    result = load_batch(engine, _batch([("u9", "i9", 2), ("u1", "i1", 3)]), known=known)
    assert result.rows_inserted == 2
    assert known.of("users") == _keys(engine, users_table)


def test_known_ids_stop_growing_at_their_limit() -> None:
    known = KnownIds(limit=3)
    known.add("users", {"a": 1, "b": 2})
    known.add("users", {"c": 3, "d": 4})
    assert known.of("users") == {"a": 1, "b": 2, "c": 3}
