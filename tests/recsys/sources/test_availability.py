"""Item sources keep availability current: stock flags, deletion marks, rows gone from the
source, on a SQLite and a PostgreSQL store; each change moves the catalogue's revision."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from recsys.db import catalogue
from recsys.sources.config import SourceConfigError, parse_source
from recsys.sources.mapping import availability
from recsys.sources.sync import sync_source

from .conftest import fill, products


def _items(store: sa.Engine) -> dict[str, tuple[bool, str | None, float | None]]:
    with store.connect() as conn:
        rows = conn.execute(sa.text("SELECT external_id, available, title, price FROM items"))
        return {r[0]: (bool(r[1]), r[2], r[3]) for r in rows}


def _products(tmp_path: Path, absent: str | None = None) -> tuple[sa.Engine, object]:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    shop = sa.create_engine(url, poolclass=NullPool)
    fill(shop)
    items = {"id": "sku", "title": "name", "price": "price", "available": "in_stock"}
    source = parse_source(
        "products",
        {"url": url, "table": "products", "items": items | ({"absent": absent} if absent else {})},
    )
    return shop, source


def test_stock_changes_renames_and_deleted_rows_reach_the_store(
    engine: sa.Engine, tmp_path: Path
) -> None:
    shop, source = _products(tmp_path)
    rejects = tmp_path / "rejects"
    first = sync_source(engine, source, rejects)  # type: ignore[arg-type]
    items = _items(engine)
    assert items["sku-1"][0] and not items["sku-2"][0]
    assert items["sku-4"][0]  # in_stock NULL: the row exists, so the item is available
    assert first.items_withdrawn == 0
    revision = catalogue.revision(engine)

    sync_source(engine, source, rejects)  # type: ignore[arg-type]
    assert catalogue.revision(engine) == revision  # nothing changed: the service reads nothing

    with shop.begin() as conn:
        conn.execute(products.update().where(products.c.sku == "sku-1").values(in_stock=False))
        conn.execute(products.update().where(products.c.sku == "sku-2").values(in_stock=True))
        conn.execute(
            products.update().where(products.c.sku == "sku-3").values(name="Sock Pro", price=5.5)
        )
        conn.execute(products.delete().where(products.c.sku == "sku-4"))
    second = sync_source(engine, source, rejects)  # type: ignore[arg-type]
    items = _items(engine)
    assert not items["sku-1"][0] and items["sku-2"][0]
    assert items["sku-3"] == (True, "Sock Pro", 5.5)
    assert not items["sku-4"][0]  # deleted in the source: kept with its history, unavailable
    assert second.items_withdrawn == 1 and second.report()["items_withdrawn"] == 1
    assert catalogue.revision(engine) > revision
    assert catalogue.unavailable_items(engine) == {"sku-1", "sku-4"}

    with shop.begin() as conn:  # back in the catalogue
        conn.execute(products.insert().values(sku="sku-4", name="Cap", in_stock=True))
    assert sync_source(engine, source, rejects).items_withdrawn == 0  # type: ignore[arg-type]
    assert _items(engine)["sku-4"][0]

    with shop.begin() as conn:  # an empty read changes nothing: more often a broken query
        conn.execute(products.delete())
    emptied = sync_source(engine, source, rejects)  # type: ignore[arg-type]
    assert (emptied.rows_read, emptied.items_withdrawn) == (0, 0)
    assert catalogue.unavailable_items(engine) == {"sku-1"}
    shop.dispose()


def test_absent_keep_leaves_items_gone_from_the_source_available(
    engine: sa.Engine, tmp_path: Path
) -> None:
    shop, source = _products(tmp_path, absent="keep")
    sync_source(engine, source, tmp_path)  # type: ignore[arg-type]
    with shop.begin() as conn:
        conn.execute(products.delete().where(products.c.sku == "sku-1"))
    assert sync_source(engine, source, tmp_path).items_withdrawn == 0  # type: ignore[arg-type]
    assert _items(engine)["sku-1"][0]
    shop.dispose()


def test_an_item_from_files_or_events_is_never_withdrawn_by_a_source(
    engine: sa.Engine, tmp_path: Path
) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO items (external_id, title) VALUES ('from-a-file', 'F')"))
    shop, source = _products(tmp_path)
    sync_source(engine, source, tmp_path)  # type: ignore[arg-type]
    assert _items(engine)["from-a-file"][0]
    shop.dispose()


def test_availability_reads_flags_and_deletion_marks() -> None:
    frame = pd.DataFrame(
        {
            "sku": ["a", "b", "c", "d", "e", "f"],
            "stock": [True, 0, "no", None, "maybe", "yes"],
            "deleted_at": [None, None, None, datetime(2026, 1, 1), None, "false"],
        },
        dtype=object,
    )
    spec = parse_source(
        "p",
        {
            "url": "sqlite://",
            "table": "p",
            "items": {"id": "sku", "available": "stock", "deleted": "deleted_at"},
        },
    ).items
    assert spec is not None
    assert availability(frame, spec) == [True, False, False, False, True, True]


def test_absent_unavailable_needs_every_row_read() -> None:
    body = {
        "url": "sqlite://",
        "table": "products",
        "watermark": "updated_at",
        "items": {"id": "sku", "absent": "unavailable"},
    }
    with pytest.raises(SourceConfigError, match=r"items\.absent = 'unavailable' needs every row"):
        parse_source("products", body)
    kept = parse_source("products", body | {"items": {"id": "sku"}})
    assert not kept.withdraws_absent
    assert parse_source(
        "products", body | {"watermark": None, "items": {"id": "sku"}}
    ).withdraws_absent
