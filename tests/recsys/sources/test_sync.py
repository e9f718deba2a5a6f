"""check and sync against a live shop database on SQLite, PostgreSQL and MariaDB/MySQL."""

from __future__ import annotations

import csv
import gc
import pickle
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from recsys.db.schema import locks_table
from recsys.sources import pipeline as pipeline_module
from recsys.sources.config import SourceConfig, SourceError, load_sources, parse_source
from recsys.sources.reader import transient
from recsys.sources.sync import check_source, lock_name, sync_source

from .conftest import PURCHASES_STORED, Shop, fill, page_views, write_sources


def _count(engine: sa.Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql)).scalar_one())


def _interactions(engine: sa.Engine, event_type: str) -> int:
    return _count(engine, f"SELECT count(*) FROM interactions WHERE event_type = '{event_type}'")


def _outlive_dead_holder(store: sa.Engine, source: SourceConfig, rejects: Path) -> None:
    """A killed sync leaves its lock: a rerun is skipped until the lock runs out, then runs."""
    early = sync_source(store, source, rejects)
    assert early.status == "skipped" and early.rows_read == 0
    assert early.reason is not None and "sync process" in early.reason
    with store.begin() as conn:
        expired = datetime.now(UTC) - timedelta(seconds=1)
        conn.execute(sa.update(locks_table).values(expires_at=expired))


def test_check_reports_columns_and_a_mapped_sample(shop_db: Shop, store: sa.Engine) -> None:
    sources = load_sources(shop_db.sources_file)
    purchases = check_source(sources["purchases"], store)
    assert purchases.columns == ("line_id", "customer_id", "sku", "quantity", "ordered_at")
    assert (purchases.sample_rows, purchases.sample_mapped, purchases.sample_rejected) == (8, 6, 2)
    assert purchases.rejects_by_reason == {"impossible_timestamp": 1, "missing_id": 1}
    assert purchases.watermark is None

    products = check_source(sources["products"], store)
    assert (products.sample_rows, products.rejects_by_reason) == (5, {"bad_id": 1})
    assert check_source(sources["customers"]).sample_mapped == 5


def test_check_names_the_source_of_a_wrong_column(shop_db: Shop) -> None:
    body = {
        "url": shop_db.url,
        "table": "page_views",
        "events": {"user": "customer_id", "item": "product", "time": "viewed_at"},
    }
    with pytest.raises(SourceError) as caught:
        check_source(parse_source("views", body))
    message = str(caught.value)
    assert message.startswith("source views: no column 'product' for item; columns are id, ")
    assert "\n" not in message

    with pytest.raises(SourceError, match=r"^source views: the query failed: "):
        check_source(parse_source("views", body | {"table": "no_such_table"}))


def _unreachable_url(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'missing' / 'folder' / 'shop.db'}"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    scheme = "postgresql+psycopg" if backend == "postgresql" else "mysql+pymysql"
    return f"{scheme}://shop:hunter2@127.0.0.1:{port}/shop"


def test_check_unreachable_database_is_one_line_without_the_password(
    shop_db: Shop, tmp_path: Path
) -> None:
    url = _unreachable_url(shop_db.backend, tmp_path)
    body = {"url": url, "table": "customers", "users": {"id": "id"}}
    with pytest.raises(SourceError) as caught:
        check_source(parse_source("customers", body))
    message = str(caught.value)
    assert message.startswith("source customers: cannot connect to ")
    assert "\n" not in message and "hunter2" not in message


def test_only_connection_trouble_is_transient(shop_db: Shop, tmp_path: Path) -> None:
    """A refused connection may pass (retried by the sync flow); a config or schema error not."""
    unreachable = parse_source(
        "customers",
        {"url": _unreachable_url(shop_db.backend, tmp_path), "table": "customers",
         "users": {"id": "id"}},
    )  # fmt: skip
    body = {"url": shop_db.url, "table": "page_views",
            "events": {"user": "customer_id", "item": "sku", "time": "viewed_at"}}  # fmt: skip
    no_column = parse_source("views", body | {"events": body["events"] | {"item": "product"}})
    no_table = parse_source("views", body | {"table": "no_such_table"})
    bad_query = parse_source("views", {k: v for k, v in body.items() if k != "table"}
                             | {"query": "SELEKT 1"})  # fmt: skip
    for source, expected in [
        (unreachable, shop_db.backend != "sqlite"),  # SQLite: the file's folder is missing
        (no_column, False),
        (no_table, False),
        (bad_query, False),
    ]:
        with pytest.raises(SourceError) as caught:
            check_source(source)
        assert caught.value.transient is expected, caught.value
        copied = pickle.loads(pickle.dumps(caught.value))  # how results cross processes
        assert (str(copied), copied.transient) == (str(caught.value), expected)


def test_transient_sqlite_errors_are_locks_only() -> None:
    locked = sa.exc.OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))
    missing = sa.exc.OperationalError("SELECT", {}, sqlite3.OperationalError("no such table: x"))
    assert transient(locked) and not transient(missing)
    assert not transient(sa.exc.ProgrammingError("SELECT", {}, Exception("syntax error")))


def test_sync_loads_every_source_and_twice_adds_nothing(
    shop_db: Shop, store: sa.Engine, tmp_path: Path
) -> None:
    sources = load_sources(shop_db.sources_file)
    rejects = tmp_path / "rejects"
    first = {name: sync_source(store, s, rejects) for name, s in sources.items()}
    purchases = first["purchases"]
    assert (purchases.rows_read, purchases.rows_inserted, purchases.rows_rejected) == (
        8,
        PURCHASES_STORED,
        2,
    )
    assert purchases.rejects_by_reason == {"impossible_timestamp": 1, "missing_id": 1}
    assert purchases.watermark == "8"
    assert (first["views"].rows_read, first["views"].rows_inserted) == (10, 10)
    assert _interactions(store, "purchase") == PURCHASES_STORED
    assert _interactions(store, "view") == 10

    assert purchases.rejects_file is not None
    with Path(purchases.rejects_file).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["reason"] for r in rows) == ["impossible_timestamp", "missing_id"]
    assert {r["file"] for r in rows} == {"purchases"}
    assert first["products"].rejects_by_reason == {"bad_id": 1}

    with store.connect() as conn:
        runner = conn.execute(
            sa.text("SELECT title, genres, year, price, available, source, attributes "
                    "FROM items WHERE external_id = 'sku-1'")
        ).one()  # fmt: skip
        moment = conn.execute(
            sa.text("SELECT min(occurred_at) FROM interactions WHERE event_type = 'purchase'")
        ).scalar_one()
    assert runner.title == "Runner" and runner.year == 2021 and runner.price == 89.9
    assert "sport" in str(runner.genres) and "available" not in str(runner.attributes)
    assert runner.available and runner.source == "products"
    assert _count(store, "SELECT count(*) FROM items WHERE NOT available") == 1  # sku-2
    # 10:00 in Berlin on 5 January is 09:00 UTC.
    assert moment == int(datetime(2026, 1, 5, 9, 0, tzinfo=UTC).timestamp() * 1000)

    items, users = (
        _count(store, "SELECT count(*) FROM items"),
        _count(store, "SELECT count(*) FROM users"),
    )
    second = {name: sync_source(store, s, rejects) for name, s in sources.items()}
    assert second["purchases"].rows_read == 0
    assert sum(r.rows_inserted for r in second.values()) == 0
    assert _interactions(store, "purchase") == PURCHASES_STORED
    assert _interactions(store, "view") == 10
    assert (
        _count(store, "SELECT count(*) FROM items"),
        _count(store, "SELECT count(*) FROM users"),
    ) == (items, users)


def test_sync_lookback_rereads_late_rows_without_duplicates(
    shop_db: Shop, store: sa.Engine, tmp_path: Path
) -> None:
    views = load_sources(shop_db.sources_file)["views"]
    assert sync_source(store, views, tmp_path).rows_inserted == 10
    # The watermark is 18:00; the look-back is one hour.
    shop_db.insert(
        page_views,
        [
            {"id": 11, "customer_id": 1, "sku": "sku-1", "viewed_at": datetime(2026, 1, 1, 17, 30)},
            {"id": 12, "customer_id": 2, "sku": "sku-2", "viewed_at": datetime(2026, 1, 1, 12, 0)},
            {"id": 13, "customer_id": 3, "sku": "sku-3", "viewed_at": datetime(2026, 1, 1, 19, 0)},
        ],
    )
    again = sync_source(store, views, tmp_path)
    assert (again.rows_inserted, again.rows_already_stored) == (2, 1)
    assert _interactions(store, "view") == 12
    assert sync_source(store, views, tmp_path).rows_inserted == 0


KILLED_SYNC = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from recsys.db.engine import create_engine
    from recsys.sources.config import load_sources
    from recsys.sources.sync import sync_source

    def die(chunk):
        if chunk == 2:
            os.kill(os.getpid(), signal.SIGKILL)

    source = load_sources(Path(sys.argv[1]))["purchases"]
    sync_source(create_engine(sys.argv[2]), source, Path(sys.argv[3]), after_load=die)
    """
)


def test_sync_killed_between_load_and_watermark_loses_and_duplicates_nothing(
    shop_db: Shop, store: sa.Engine, tmp_path: Path
) -> None:
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            KILLED_SYNC,
            str(shop_db.sources_file),
            str(store.url),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # Chunk 1 moved the watermark; chunk 2 was stored but its move was lost.
    with store.connect() as conn:
        stored = int(conn.execute(sa.text("SELECT value FROM source_watermarks")).scalar_one())
        beyond = conn.execute(
            sa.text("SELECT count(*) FROM interactions WHERE import_id > 1")
        ).scalar_one()
    assert 1 <= stored < 8 and beyond > 0

    purchases = load_sources(shop_db.sources_file)["purchases"]
    _outlive_dead_holder(store, purchases, tmp_path)
    rerun = sync_source(store, purchases, tmp_path)
    assert rerun.rows_read == 8 - stored
    assert rerun.rows_already_stored == beyond
    assert rerun.rows_inserted + rerun.rows_already_stored + rerun.rows_rejected == rerun.rows_read
    assert _interactions(store, "purchase") == PURCHASES_STORED
    assert rerun.watermark == "8"


def test_sync_into_each_store(engine: sa.Engine, tmp_path: Path) -> None:
    """The store may be the embedded SQLite or PostgreSQL; the watermark lives there too."""
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    shop = sa.create_engine(url)
    fill(shop)
    shop.dispose()
    sources = load_sources(write_sources(tmp_path / "recsys.toml", url))
    for _ in range(2):
        for source in sources.values():
            sync_source(engine, source, tmp_path / "rejects")
    assert _interactions(engine, "purchase") == PURCHASES_STORED
    assert _interactions(engine, "view") == 10
    assert _count(engine, "SELECT count(*) FROM source_watermarks") == 2


HARD_KILLED_SYNC = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from recsys.db.engine import create_engine
    from recsys.sources.config import load_sources
    from recsys.sources.sync import sync_source

    source = load_sources(Path(sys.argv[1]))["views"]
    sync_source(create_engine(sys.argv[2]), source, Path(sys.argv[3]))
    """
)


@pytest.mark.slow
def test_sync_killed_hard_midway_then_rerun_stores_every_row_once(
    store: sa.Engine, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    shop = sa.create_engine(url)
    fill(shop)
    start = datetime(2026, 1, 2)
    rows = [
        {
            "id": 100 + i,
            "customer_id": i % 97,
            "sku": f"sku-{i % 89}",
            "viewed_at": start + timedelta(seconds=i // 3),
        }
        for i in range(30_000)
    ]
    with shop.begin() as conn:
        conn.execute(page_views.insert(), rows)
    shop.dispose()
    sources_file = write_sources(tmp_path / "recsys.toml", url)
    sources_file.write_text(sources_file.read_text().replace("chunk_rows = 4", "chunk_rows = 100"))
    child = subprocess.Popen(
        [sys.executable, "-c", HARD_KILLED_SYNC, str(sources_file), str(store.url), str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and child.poll() is None:
        if _count(store, "SELECT count(*) FROM source_watermarks") and (
            _interactions(store, "view") > 3_000
        ):
            break
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL, "the sync ended before it could be killed"
    assert 0 < _interactions(store, "view") < 30_010

    _outlive_dead_holder(store, load_sources(sources_file)["views"], tmp_path)
    rerun = sync_source(store, load_sources(sources_file)["views"], tmp_path)
    assert rerun.rows_inserted + rerun.rows_already_stored == rerun.rows_read
    assert _interactions(store, "view") == 30_010
    assert sync_source(store, load_sources(sources_file)["views"], tmp_path).rows_inserted == 0


def test_one_sync_per_source_at_a_time_and_sources_side_by_side(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """While a sync of purchases is between chunks, a second one is skipped at once (naming
    the first), a sync of views runs; nothing is stored twice and the lock is then free."""
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    shop = sa.create_engine(url)
    fill(shop)
    shop.dispose()
    sources = load_sources(write_sources(tmp_path / "recsys.toml", url))
    paused, go_on = threading.Event(), threading.Event()

    def pause(chunk: int) -> None:  # chunk 2 is stored, the watermark still at chunk 1's end
        if chunk == 2:
            paused.set()
            assert go_on.wait(60)

    results = {}

    def first() -> None:
        results["first"] = sync_source(
            engine, sources["purchases"], tmp_path, after_load=pause, holder="the first sync"
        )

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert paused.wait(60)
        second = sync_source(engine, sources["purchases"], tmp_path)
        views = sync_source(engine, sources["views"], tmp_path)
    finally:
        go_on.set()
        thread.join(60)
    assert second.status == "skipped" and second.rows_read == 0
    assert second.reason is not None
    assert second.reason.startswith("source:purchases is already running: held by the first sync")
    assert second.report()["status"] == "skipped" and "reason" in second.report()
    assert second.watermark == second.watermark_before == "2"  # the first chunk's end
    assert views.status == "synced" and views.rows_inserted == 10
    assert results["first"].status == "synced" and "reason" not in results["first"].report()
    assert results["first"].rows_inserted == PURCHASES_STORED
    assert _interactions(engine, "purchase") == PURCHASES_STORED
    assert _count(engine, "SELECT count(*) FROM locks") == 0
    again = sync_source(engine, sources["purchases"], tmp_path)
    assert (again.status, again.rows_read) == ("synced", 0)


def test_a_failed_sync_frees_its_lock(store: sa.Engine, tmp_path: Path) -> None:
    body = {"url": f"sqlite:///{tmp_path / 'none.db'}", "table": "page_views",
            "events": {"user": "customer_id", "item": "sku", "time": "viewed_at"}}  # fmt: skip
    with pytest.raises(SourceError):
        sync_source(store, parse_source("views", body), tmp_path)
    assert _count(store, "SELECT count(*) FROM locks") == 0


def test_lock_names_fit_the_locks_table() -> None:
    assert lock_name("purchases") == "source:purchases"
    long_a, long_b = "a" * 127 + "x", "a" * 127 + "y"
    assert len(lock_name(long_a)) == 64 and lock_name(long_a) != lock_name(long_b)


def _clicks(tmp_path: Path, rows: int, chunk_rows: int) -> SourceConfig:
    url = f"sqlite:///{tmp_path / 'clicks.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE clicks (uid TEXT, sku TEXT, at INTEGER)"))
        conn.execute(
            sa.text("INSERT INTO clicks VALUES (:u, 'a', :t)"),
            [{"u": f"u{i}", "t": 1_700_000_000 + i} for i in range(rows)],
        )
    engine.dispose()
    events = {"user": "uid", "item": "sku", "time": "at"}
    body = {"url": url, "table": "clicks", "watermark": "at", "chunk_rows": chunk_rows}
    return parse_source("clicks", body | {"events": events})


def test_sync_a_read_failing_midway_keeps_the_chunks_before_it(
    store: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next chunk is read while one loads; a read error still comes after the loads."""
    source = _clicks(tmp_path, 10, 3)
    real = pipeline_module.read_chunks

    def failing(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for number, chunk in enumerate(real(*args, **kwargs), start=1):
            if number == 3:
                raise SourceError("source clicks: reading failed: gone")
            yield chunk

    monkeypatch.setattr(pipeline_module, "read_chunks", failing)
    with pytest.raises(SourceError, match="gone"):
        sync_source(store, source, tmp_path / "rejects")
    # Chunks end before the last row fetched (it may share its watermark with the next ones):
    # rows 0-1, then 2-4.
    assert _interactions(store, "interaction") == 5
    with store.connect() as conn:
        stored = conn.execute(sa.text("SELECT value FROM source_watermarks")).scalar_one()
    assert stored == str(1_700_000_004)
    assert not [t for t in threading.enumerate() if t.name.startswith("recsys-source")]


def test_sync_stopped_by_its_caller_stops_reading_ahead(store: sa.Engine, tmp_path: Path) -> None:
    source = _clicks(tmp_path, 10, 2)

    def stop(number: int) -> None:
        if number == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sync_source(store, source, tmp_path / "rejects", after_load=stop)
    assert not [t for t in threading.enumerate() if t.name.startswith("recsys-source")]
    assert gc.isenabled()
    rerun = sync_source(store, source, tmp_path / "rejects")
    # Chunk 1 (row 0) moved the watermark; chunk 2 (rows 1-2) was stored, its move stopped;
    # chunk 3 (rows 3-4), queued behind it, was dropped or, if already loading, stored.
    assert rerun.rows_read == 9 and rerun.rows_already_stored in (2, 4)
    assert rerun.rows_inserted == 9 - rerun.rows_already_stored
    assert _interactions(store, "interaction") == 10


def test_a_failed_load_holds_the_watermark_though_a_later_chunk_committed(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Into PostgreSQL two chunks load at once, so chunk 3 commits while chunk 2 fails: the
    watermark stays after chunk 1, and the rerun counts chunk 3's rows as already stored."""
    source = _clicks(tmp_path, 10, 3)
    real = pipeline_module.load_batch
    calls: list[int] = []

    def second_fails(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            time.sleep(0.3)  # chunk 3, loading beside it on PostgreSQL, commits first
            raise RuntimeError("store write failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline_module, "load_batch", second_fails)
    with pytest.raises(RuntimeError, match="store write failed"):
        sync_source(engine, source, tmp_path / "rejects")
    monkeypatch.undo()
    concurrent = engine.dialect.name == "postgresql"
    assert pipeline_module.loaders(engine, source) == (2 if concurrent else 1)
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT value FROM source_watermarks")).scalar_one()
    assert stored == str(1_700_000_001)  # the end of chunk 1 (rows 0-1)
    # PostgreSQL: chunk 3 loaded beside chunk 2; SQLite: it waited its turn, then was dropped
    # or, if the one loader took it up before the failure was seen, stored.
    ahead = _interactions(engine, "interaction") - 2
    assert ahead > 0 if concurrent else ahead >= 0
    assert not [t for t in threading.enumerate() if t.name.startswith("recsys-source")]

    rerun = sync_source(engine, source, tmp_path / "rejects")
    assert (rerun.rows_read, rerun.rows_already_stored) == (8, ahead)
    assert rerun.rows_inserted == 8 - ahead
    assert _interactions(engine, "interaction") == 10
    assert rerun.watermark == str(1_700_000_009)
