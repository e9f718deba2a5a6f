"""Bulk loading: re-imports are no-ops, catalogue attributes merge, runs are recorded."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine, select, text

from recsys.data.frames import ImportBatch, Reject
from recsys.data.load import load_batch, prepare_events, refresh_statistics
from recsys.data.store_ids import KnownIds
from recsys.db.queries import stats
from recsys.db.schema import imports_table, interactions_table, items_table, users_table


def _events(rows: list[tuple[str, str, str, float, int]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "value", "occurred_at"])
    frame["occurred_at"] = frame["occurred_at"].astype(np.int64)
    frame["value"] = frame["value"].astype(np.float64)
    return frame.astype({"user_id": object, "item_id": object, "event_type": object})


def _stored(engine: Engine) -> list[tuple[object, ...]]:
    """Every stored event as (user, item, type, value, time, import id), oldest first."""
    c = interactions_table.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                users_table.c.external_id,
                items_table.c.external_id,
                c.event_type,
                c.value,
                c.occurred_at,
                c.import_id,
            )
            .join(users_table, users_table.c.id == c.user_id)
            .join(items_table, items_table.c.id == c.item_id)
            .order_by(c.occurred_at)
        ).all()
    return [tuple(r) for r in rows]


EVENTS = [
    ("u1", "i1", "view", np.nan, 1_000),
    ("u1", "i2", "purchase", 9.5, 2_000),
    ("u2", "i1", "view", np.nan, 1_500),
    ("u2", "i1", "view", np.nan, 2_500),  # same pair later: a second event, not a duplicate
]


def test_load_batch_inserts_then_reimport_adds_nothing(engine: Engine) -> None:
    batch = ImportBatch(kind="test", source="t", interactions=_events(EVENTS), rows_read=4)
    first = load_batch(engine, batch)
    assert (first.rows_inserted, first.rows_skipped) == (4, 0)
    assert (first.users_total, first.items_total) == (2, 2)

    again = load_batch(engine, batch)
    assert (again.rows_inserted, again.rows_skipped) == (0, 4)
    assert stats(engine)["interactions"] == 4
    assert stats(engine)["interactions_by_event_type"] == {"purchase": 1, "view": 3}


def test_load_batch_partial_overlap_and_repeats_within_a_batch(engine: Engine) -> None:
    load_batch(engine, ImportBatch(kind="t", source="t", interactions=_events(EVENTS[:2])))
    overlapping = _events([*EVENTS, EVENTS[3]])  # two stored rows, one row given twice
    result = load_batch(engine, ImportBatch(kind="t", source="t", interactions=overlapping))
    assert (result.rows_inserted, result.rows_skipped) == (2, 3)
    assert stats(engine)["interactions"] == 4


def test_load_batch_keeps_values_times_and_types(engine: Engine) -> None:
    load_batch(engine, ImportBatch(kind="test", source="t", interactions=_events(EVENTS)))
    rows = [r[:5] for r in _stored(engine)]
    assert rows[0] == ("u1", "i1", "view", None, 1_000)
    assert rows[2] == ("u1", "i2", "purchase", 9.5, 2_000)


def test_load_batch_merges_catalogue_attributes_without_erasing(engine: Engine) -> None:
    items = pd.DataFrame(
        {
            "item_id": ["i1"],
            "title": ["Toy Story (1995)"],
            "genres": [["Animation", "Comedy"]],
            "year": [1995],
            "price": [None],
            "attributes": [{"imdb": "tt0114709"}],
        }
    )
    load_batch(engine, ImportBatch(kind="t", source="t", interactions=_events(EVENTS), items=items))
    # A later import that knows only the price must not erase the title.
    update = items.assign(title=[None], genres=[None], year=[None], price=[4.99], attributes=[None])
    load_batch(engine, ImportBatch(kind="t", source="t", items=update))
    with engine.connect() as conn:
        row = (
            conn.execute(select(items_table).where(items_table.c.external_id == "i1"))
            .mappings()
            .one()
        )
    assert row["title"] == "Toy Story (1995)"
    assert row["genres"] == ["Animation", "Comedy"]
    assert row["year"] == 1995
    assert row["price"] == 4.99
    assert row["attributes"] == {"imdb": "tt0114709"}


def test_load_batch_records_the_import_run(engine: Engine) -> None:
    batch = ImportBatch(
        kind="csv",
        source="events.csv",
        interactions=_events(EVENTS[:1]),
        rejects=[Reject("events.csv", 3, "missing_id", ",i1,view")],
        rows_read=2,
    )
    result = load_batch(engine, batch, rejects_path="/r.csv")
    with engine.connect() as conn:
        run = conn.execute(select(imports_table)).mappings().one()
    assert run["id"] == result.import_id
    assert (run["rows_read"], run["rows_inserted"], run["rows_rejected"]) == (2, 1, 1)
    assert run["rejects_by_reason"] == {"missing_id": 1}
    assert run["rejects_path"] == "/r.csv"
    assert run["finished_at"] is not None


def test_load_batch_bulk_path_handles_many_rows(engine: Engine) -> None:
    n = 50_000
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "user_id": [f"u{i}" for i in rng.integers(0, 500, n)],
            "item_id": [f"i{i}" for i in rng.integers(0, 300, n)],
            "event_type": "view",
            "value": np.where(rng.random(n) < 0.5, np.nan, 3.0),
            "occurred_at": np.arange(n, dtype=np.int64) * 1000,
        }
    )
    result = load_batch(engine, ImportBatch(kind="t", source="t", interactions=frame))
    assert result.rows_inserted == n
    assert stats(engine)["interactions"] == n


def test_load_batch_writes_awkward_text_and_numbers_exactly(engine: Engine) -> None:
    """COPY's text format: backslashes and quotes in types, exact floats, non-ASCII ids."""
    awkward = [
        ("ü-1", "i\\1", "a\\b", 0.1 + 0.2, 1_000),
        ('u"2', "i 2", "view", 1e300, 2_000),
        ("u3", "i😀", "view", float("inf"), 3_000),
        ("u4", "i4", "v'w", -0.0, 4_000),
        ("u5", "i5", "view", np.nan, -5),
    ]
    result = load_batch(engine, ImportBatch(kind="t", source="t", interactions=_events(awkward)))
    assert result.rows_inserted == 5
    c = interactions_table.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                users_table.c.external_id,
                items_table.c.external_id,
                c.event_type,
                c.value,
                c.occurred_at,
            )
            .join(users_table, users_table.c.id == c.user_id)
            .join(items_table, items_table.c.id == c.item_id)
            .order_by(c.occurred_at)
        ).all()
    expected = [(u, i, t, None if np.isnan(v) else v, at) for u, i, t, v, at in awkward]
    assert sorted(rows, key=lambda r: r[4]) == sorted(expected, key=lambda r: r[4])


def test_load_batch_creates_only_the_missing_ids_in_sorted_order(engine: Engine) -> None:
    load_batch(engine, ImportBatch(kind="t", source="t", interactions=_events(EVENTS[:1])))
    later = [("u9", "i1", "view", np.nan, 7), ("u0", "i1", "view", np.nan, 8), EVENTS[0]]
    result = load_batch(engine, ImportBatch(kind="t", source="t", interactions=_events(later)))
    assert (result.rows_inserted, result.users_total, result.items_total) == (2, 3, 1)
    with engine.connect() as conn:
        users = conn.execute(select(users_table.c.external_id).order_by(users_table.c.id)).all()
    assert [u for (u,) in users] == ["u1", "u0", "u9"]


def test_a_large_load_refreshes_the_planners_statistics(engine: Engine) -> None:
    """After a bulk load the history of one user is read through the index, not a scan."""
    n = 30_000
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "user_id": [f"u{i}" for i in rng.integers(0, 3_000, n)],
            "item_id": [f"i{i}" for i in rng.integers(0, 500, n)],
            "event_type": "view",
            "value": np.nan,
            "occurred_at": np.arange(n, dtype=np.int64) * 1000,
        }
    )
    load_batch(engine, ImportBatch(kind="t", source="t", interactions=frame))
    small = frame.iloc[:100].assign(occurred_at=frame["occurred_at"].iloc[:100] + 1)
    if engine.dialect.name != "postgresql":
        assert refresh_statistics(engine, n) is False  # SQLite plans without statistics
        return
    analyzed = text("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'interactions'")
    with engine.connect() as conn:
        first = conn.execute(analyzed).scalar_one()
        plan = "\n".join(
            conn.execute(
                text(
                    "EXPLAIN SELECT i.item_id FROM interactions i JOIN users u"
                    " ON u.id = i.user_id WHERE u.external_id IN ('u7', 'u8')"
                )
            ).scalars()
        )
    assert first is not None
    assert "Seq Scan on interactions" not in plan, plan
    # A small load after it leaves the statistics alone (autovacuum's job).
    load_batch(engine, ImportBatch(kind="t", source="t", interactions=small))
    with engine.connect() as conn:
        assert conn.execute(analyzed).scalar_one() == first
    assert refresh_statistics(engine, 100) is False


def test_keys_resolved_ahead_load_the_same_rows(engine: Engine) -> None:
    """A sync prepares the next chunk while the chunk before loads; the rows are the ones a
    plain load writes, and rows prepared for another batch are refused."""
    known = KnownIds()
    batch = ImportBatch(kind="t", source="t", interactions=_events(EVENTS), rows_read=4)
    rows = prepare_events(engine, batch, known)
    assert rows is not None and rows.out_of_order == 0
    assert set(known.of("users")) == {"u1", "u2"} and set(known.of("items")) == {"i1", "i2"}
    assert stats(engine)["interactions"] == 0  # ids exist, events not yet
    other = ImportBatch(kind="t", source="t", interactions=_events(EVENTS[:2]), rows_read=2)
    with pytest.raises(ValueError, match="one per event"):
        load_batch(engine, other, prepared=rows)
    loaded = load_batch(engine, batch, prepared=rows)
    assert (loaded.rows_inserted, loaded.users_total, loaded.items_total) == (4, 2, 2)
    c = interactions_table.c
    with engine.connect() as conn:
        stored = conn.execute(
            select(users_table.c.external_id, items_table.c.external_id, c.occurred_at)
            .join(users_table, users_table.c.id == c.user_id)
            .join(items_table, items_table.c.id == c.item_id)
            .order_by(c.occurred_at)
        ).all()
    assert [tuple(r) for r in stored] == [
        (u, i, t) for u, i, _, _, t in sorted(EVENTS, key=lambda e: e[4])
    ]
    described = ImportBatch(kind="t", source="t", items=pd.DataFrame({"item_id": ["i9"]}))
    assert prepare_events(engine, described, known) is None  # upserted inside the load


def test_mixed_event_types_and_values_read_back_exactly(engine: Engine) -> None:
    """Rows of several event types (one not ASCII), with and without values (an infinite one
    too), stored exactly; then a re-import overlapping them (PostgreSQL's staged COPY)."""
    rows = [
        ("u1", "i1", "view", np.nan, 1_000),
        ("u1", "i2", "purchase", 19.99, 2_000),
        ("u2", "i1", "vue_détaillée", np.nan, 1_500),
        ("u2", "i3", "purchase", -0.5, 2_500),
        ("u3", "i2", "rating", 4.0, 3_000),
        ("u3", "i3", "rating", np.inf, 3_500),
        ("u3", "i1", "view", np.nan, 4_000),
    ]
    first = load_batch(engine, ImportBatch(kind="t", source="t", interactions=_events(rows)))
    assert first.rows_inserted == len(rows)
    more = [*rows[3:], ("u4", "i4", "vue_détaillée", 2.5, 5_000)]
    again = load_batch(engine, ImportBatch(kind="t", source="t", interactions=_events(more)))
    assert (again.rows_inserted, again.rows_skipped) == (1, 4)
    stored = _stored(engine)
    in_time = sorted([*rows, more[-1]], key=lambda r: r[4])
    expected = [(*r[:3], None if np.isnan(r[3]) else r[3], r[4]) for r in in_time]
    assert [tuple(r[:5]) for r in stored] == expected
    assert {r[5] for r in stored} == {first.import_id, again.import_id}
