"""The plain-data queries behind `recsys stats` and the dashboard (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from sqlalchemy import Engine

from recsys.data.frames import ImportBatch, Reject
from recsys.data.ingest import ingest
from recsys.db import queries
from recsys.sources.watermarks import write_watermark

DAY = queries.DAY_MS


def _batch(kind: str, source: str, rows: list[tuple[str, str, str, int]]) -> ImportBatch:
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "occurred_at"])
    events["value"] = float("nan")
    items = pd.DataFrame(
        {
            "item_id": ["i1", "i2", "i_3"],
            "title": ["Alpha", "Beta 50%", "Gamma"],
            "genres": [None, None, None],
            "year": [None, None, None],
            "price": [None, None, None],
            "attributes": [None, None, None],
        }
    )
    return ImportBatch(
        kind=kind,
        source=source,
        interactions=events[["user_id", "item_id", "event_type", "value", "occurred_at"]],
        items=items,
        rejects=[Reject(source, 7, "bad_time", "u1,i1,x"), Reject(source, 9, "bad_id", "")],
        rows_read=len(rows) + 2,
    )


def test_counts_per_day_imports_syncs_and_searches(engine: Engine, tmp_path: Path) -> None:
    rows = [
        ("u1", "i1", "view", 2 * DAY + 5),
        ("u1", "i2", "click", 2 * DAY + 9),
        ("u10", "i1", "view", 3 * DAY),
        ("u_2", "i_3", "view", 3 * DAY + 1),
    ]
    ingest(engine, _batch("csv", "events.csv", rows), tmp_path)
    ingest(engine, _batch("source", "shop", [("u1", "i_3", "buy", 4 * DAY)]), tmp_path)
    write_watermark(engine, "shop", "line_id", 42)

    stats = queries.stats(engine)
    assert stats["interactions"] == 5 and stats["interactions_by_event_type"]["view"] == 3
    assert stats["first_occurred_at"] == queries.ms_to_iso(2 * DAY + 5)
    assert stats["last_occurred_at"] == queries.ms_to_iso(4 * DAY)
    assert queries.events_per_day(engine) == [
        (2 * DAY, "click", 1),
        (2 * DAY, "view", 1),
        (3 * DAY, "view", 2),
        (4 * DAY, "buy", 1),
    ]

    runs = queries.recent_imports(engine)
    assert [(r["kind"], r["source"], r["rows_inserted"]) for r in runs] == [
        ("source", "shop", 1),
        ("csv", "events.csv", 4),
    ]
    assert runs[1]["rejects_by_reason"] == {"bad_id": 1, "bad_time": 1}
    assert runs[1]["rejects_path"] and Path(runs[1]["rejects_path"]).is_file()
    assert queries.import_run(engine, runs[1]["id"])["source"] == "events.csv"  # type: ignore[index]
    assert queries.import_run(engine, 999) is None

    (shop,) = queries.source_syncs(engine)
    assert (shop["name"], shop["chunks"], shop["rows_read"], shop["rows_inserted"]) == (
        "shop",
        1,
        3,
        1,
    )
    assert shop["rejects_by_reason"] == {"bad_id": 1, "bad_time": 1}
    assert shop["watermark"]["column"] == "line_id" and shop["watermark"]["value"] == "42"

    assert queries.find_users(engine, "u1") == ["u1", "u10"]
    assert queries.find_users(engine, "u_") == ["u_2"]  # _ is not a wildcard
    assert queries.find_items(engine, "i_") == [("i_3", "Gamma")]
    assert queries.find_items(engine, "50%") == [("i2", "Beta 50%")]  # by title
    assert queries.find_items(engine, "alp") == [("i1", "Alpha")]

    history = queries.user_events(engine, "u1")
    assert [(e["item_id"], e["title"], e["event_type"]) for e in history] == [
        ("i_3", "Gamma", "buy"),
        ("i2", "Beta 50%", "click"),
        ("i1", "Alpha", "view"),
    ]
    assert queries.user_events(engine, "u1", limit=1)[0]["occurred_at"] == 4 * DAY
    assert queries.user_events(engine, "nobody") == []
    assert queries.item_titles(engine, ["i1", "nope", "i1"]) == {"i1": "Alpha"}
