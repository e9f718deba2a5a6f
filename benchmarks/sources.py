"""Database-source sync speed: ``sync_source`` from a PostgreSQL source into a store.

The source is a PostgreSQL database of its own holding one events table, ``page_views(id,
customer_id, sku, viewed_at)`` with an index on ``viewed_at`` (the watermark), filled on the
server with ``generate_series``. Three measurements:

- bulk: ``--rows`` new rows (1M) synced into a fresh PostgreSQL store and into a fresh SQLite
  store; target >= 200,000 rows/s each.
- incremental: the source grows to ``--existing`` rows (10M) and each store holds those same
  rows with the watermark at the last of them; ``--new`` rows (10k) are added to the source
  and synced. Target: under 2 s. The store's existing rows are written by SQL from the same
  formulas that fill the source (users and items by external id, the same epoch-ms times) and
  the watermark with ``write_watermark``, not by syncing them: syncing 10M rows would only
  repeat the bulk measurement. The timed sync is checked to read and insert exactly the new
  rows.
- the plan: PostgreSQL's EXPLAIN of the statement the reader builds (``read_statement``) with
  the stored watermark bound, as the reader's server-side cursor runs it; it must use the
  index on ``viewed_at``.

Every database is created for the run and dropped afterwards. A measurement, not a test: the
script exits 0 whatever the verdict.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from _common import (
    Skipped,
    format_table,
    machine_info,
    parse_backends,
    scratch_database,
    verdict,
    write_results,
)

from recsys.db.engine import create_engine
from recsys.db.migrate import upgrade
from recsys.db.schema import imports_table
from recsys.sources.config import EventColumns, SourceConfig
from recsys.sources.reader import read_statement, source_engine
from recsys.sources.sync import SyncResult, sync_source
from recsys.sources.watermarks import read_watermark, write_watermark

TARGET_ROWS_PER_S = 200_000
TARGET_INCREMENTAL_S = 2.0
SOURCES = (
    "recsys/sources",
    "recsys/data/load.py",
    "recsys/data/readers.py",
    "recsys/db/schema.py",
)
NAME = "page_views"
WATERMARK_INDEX = "page_views_viewed_at"

# Row g of the source (g = 1, 2, ...): the same formulas fill the source and, for the
# incremental case, the store's existing rows. Times are 100 ms apart from 2024-01-01 UTC.
START = datetime(2024, 1, 1)
STEP_MS = 100
START_MS = int(START.replace(tzinfo=UTC).timestamp() * 1000)


def customer_sql(users: int) -> str:
    return f"(g * 7919) % {users}"


def sku_sql(items: int) -> str:
    return f"'sku-' || ((g * 104729) % {items})"


BULK_HEADERS = ("store", "rows", "sync s", "rows/s", "inserted", f">= {TARGET_ROWS_PER_S:,} rows/s")
INCREMENTAL_HEADERS = (
    "store",
    "existing rows",
    "new rows",
    "fill s (untimed)",
    "sync s",
    "read",
    "inserted",
    f"< {TARGET_INCREMENTAL_S:g} s",
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the bulk sync")
    parser.add_argument("--existing", type=int, default=10_000_000, help="rows already synced")
    parser.add_argument("--new", type=int, default=10_000, help="rows of the incremental sync")
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--chunk-rows", type=int, default=None, help="the source's chunk_rows")
    parser.add_argument("--stores", default="postgresql,sqlite", help="bulk sync targets")
    parser.add_argument(
        "--incremental-stores", default="postgresql,sqlite", help="incremental sync targets"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 50k bulk rows, 200k existing, 2k new",
    )
    parser.add_argument("--name", default="sources", help="results/<name>.md and .json")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.existing, args.new = 50_000, 200_000, 2_000
    args.existing = max(args.existing, args.rows)
    return args


def source_config(url: str, chunk_rows: int | None) -> SourceConfig:
    extra = {} if chunk_rows is None else {"chunk_rows": chunk_rows}
    return SourceConfig(
        name=NAME,
        url=url,
        table=NAME,
        watermark="viewed_at",
        events=EventColumns(user="customer_id", item="sku", time="viewed_at"),
        **extra,
    )


def create_source(url: str) -> None:
    with _psql(url) as conn:
        conn.exec_driver_sql(
            f"CREATE TABLE {NAME} (id bigint PRIMARY KEY, customer_id integer NOT NULL,"
            " sku text NOT NULL, viewed_at timestamp NOT NULL)"
        )
        conn.exec_driver_sql(f"CREATE INDEX {WATERMARK_INDEX} ON {NAME} (viewed_at)")


def add_source_rows(url: str, first: int, last: int, users: int, items: int) -> float:
    """Rows ``first..last`` into the source (one INSERT ... SELECT), then ANALYZE; seconds."""
    started = time.perf_counter()
    with _psql(url) as conn:
        conn.execute(
            sa.text(
                f"INSERT INTO {NAME} (id, customer_id, sku, viewed_at)"
                f" SELECT g, {customer_sql(users)}, {sku_sql(items)},"
                f" timestamp '{START.isoformat(sep=' ')}' + g * interval '{STEP_MS} milliseconds'"
                f" FROM generate_series({first}::bigint, {last}::bigint) AS g"
            )
        )
    with _psql(url) as conn:
        conn.exec_driver_sql(f"VACUUM ANALYZE {NAME}")
    return time.perf_counter() - started


def viewed_at(g: int) -> datetime:
    return START + timedelta(milliseconds=g * STEP_MS)


@contextmanager
def _psql(url: str) -> Iterator[sa.Connection]:
    engine = sa.create_engine(
        url.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT"
    )
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def timed_sync(store: sa.Engine, source: SourceConfig) -> tuple[SyncResult, float]:
    with tempfile.TemporaryDirectory(prefix="recsys_bench_rejects_") as rejects:
        started = time.perf_counter()
        result = sync_source(store, source, Path(rejects))
        return result, time.perf_counter() - started


def checkpoint(url: str) -> None:
    """Flush the PostgreSQL server's dirty pages now (untimed): the source fill and earlier
    stores otherwise went to disk during the next timed sync, on the same 2 cores."""
    try:
        with _psql(url) as conn:
            conn.exec_driver_sql("CHECKPOINT")
    except sa.exc.DBAPIError as exc:  # CHECKPOINT needs a superuser (or pg_checkpoint)
        print(f"  no CHECKPOINT before the sync: {str(exc).splitlines()[0]}", flush=True)


def measure_bulk(backend: str, source: SourceConfig, rows: int) -> dict[str, Any]:
    with scratch_database(backend) as url:
        upgrade(create_engine(url))
        store = create_engine(url)
        try:
            checkpoint(source.url)
            result, seconds = timed_sync(store, source)
        finally:
            store.dispose()
    rate = result.rows_read / seconds
    return {
        "store": backend,
        "rows": rows,
        "seconds": round(seconds, 3),
        "rows_per_s": round(rate),
        "sync": result.report(),
        "pass": rate >= TARGET_ROWS_PER_S
        and result.rows_read == rows
        and result.rows_inserted == rows,
    }


def fill_store(store: sa.Engine, existing: int, users: int, items: int) -> None:
    """The rows a sync of source rows ``1..existing`` stores, written by SQL, and the watermark.

    Users and items get the external ids the mapping gives (``str(customer_id)``, the sku);
    each interaction is (user, item, "interaction", no value, epoch ms of ``viewed_at``).
    """
    postgres = store.dialect.name == "postgresql"
    if postgres:
        cte, series, text = "", f"generate_series(1::bigint, {existing}::bigint) AS s(g)", "::text"
    else:  # SQLite has no generate_series built in
        cte = (
            f"WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < {existing}) "
        )
        series, text = "s", ""
    customer = f"CAST({customer_sql(users)} AS TEXT)"
    with store.begin() as conn:
        import_id = conn.execute(
            sa.insert(imports_table)
            .values(
                kind="benchmark-fill",
                source=NAME,
                started_at=datetime.now(UTC),
                finished_at=datetime.now(UTC),
                rows_read=existing,
                rows_inserted=existing,
                rows_rejected=0,
                rows_out_of_order=0,
            )
            .returning(imports_table.c.id)
        ).scalar_one()
        conn.execute(
            sa.text(
                f"{cte}INSERT INTO users (external_id) SELECT DISTINCT {customer} FROM {series}"
            )
        )
        conn.execute(
            sa.text(
                f"{cte}INSERT INTO items (external_id) SELECT DISTINCT {sku_sql(items)}{text}"
                f" FROM {series}"
            )
        )
        insert_sql = (
            f"{cte}INSERT INTO interactions"
            " (user_id, item_id, event_type, value, occurred_at, import_id)"
            f" SELECT u.id, i.id, 'interaction', NULL, {START_MS} + g * {STEP_MS}, {import_id}"
            f" FROM {series}"
            f" JOIN users u ON u.external_id = {customer}"
            f" JOIN items i ON i.external_id = {sku_sql(items)}{text}"
            f" ORDER BY u.id, g"
        )
        conn.execute(sa.text(insert_sql))
    with store.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
        conn.commit()
    write_watermark(store, NAME, "viewed_at", viewed_at(existing))


def explain_watermark_query(source: SourceConfig, low: datetime) -> list[str]:
    """EXPLAIN of the reader's statement for ``low``, declared as the reader's cursor is."""
    engine = source_engine(source)
    try:
        stmt = read_statement(source, engine, low)
        compiled = stmt.compile(dialect=engine.dialect)
        with engine.connect() as conn:
            # psycopg's server-side cursors run DECLARE ... CURSOR FOR (planned for a fast start).
            plan = conn.exec_driver_sql(
                f"EXPLAIN DECLARE recsys_plan CURSOR FOR {compiled}", dict(compiled.params)
            ).all()
    finally:
        engine.dispose()
    return [str(row[0]) for row in plan]


def measure_incremental(
    backend: str, source: SourceConfig, args: argparse.Namespace
) -> dict[str, Any]:
    with scratch_database(backend) as url:
        upgrade(create_engine(url))
        store = create_engine(url)
        try:
            started = time.perf_counter()
            fill_store(store, args.existing, args.users, args.items)
            fill_s = time.perf_counter() - started
            with store.connect() as conn:
                stored = conn.execute(sa.text("SELECT count(*) FROM interactions")).scalar_one()
            low = read_watermark(store, NAME, "viewed_at")
            result, seconds = timed_sync(store, source)
        finally:
            store.dispose()
    return {
        "store": backend,
        "existing": args.existing,
        "stored_before": stored,
        "new": args.new,
        "fill_s": round(fill_s, 1),
        "seconds": round(seconds, 3),
        "low": low.isoformat() if isinstance(low, datetime) else str(low),
        "sync": result.report(),
        "pass": seconds < TARGET_INCREMENTAL_S
        and stored == args.existing
        and result.rows_read == args.new
        and result.rows_inserted == args.new,
    }


def bulk_row(record: dict[str, Any]) -> list[str]:
    if "skipped" in record:
        return [record["store"], "skipped", *["-"] * (len(BULK_HEADERS) - 2)]
    return [
        record["store"],
        f"{record['rows']:,}",
        f"{record['seconds']:.2f}",
        f"{record['rows_per_s']:,}",
        f"{record['sync']['rows_inserted']:,}",
        verdict(record["pass"]),
    ]


def incremental_row(record: dict[str, Any]) -> list[str]:
    if "skipped" in record:
        return [record["store"], "skipped", *["-"] * (len(INCREMENTAL_HEADERS) - 2)]
    return [
        record["store"],
        f"{record['stored_before']:,}",
        f"{record['new']:,}",
        f"{record['fill_s']:.0f}",
        f"{record['seconds']:.3f}",
        f"{record['sync']['rows_read']:,}",
        f"{record['sync']['rows_inserted']:,}",
        verdict(record["pass"]),
    ]


def guarded(backend: str, run: Any) -> dict[str, Any]:
    try:
        return dict(run())
    except Skipped as exc:
        print(f"{backend}: skipped: {exc}")
        return {"store": backend, "skipped": str(exc)}


def main() -> None:
    args = parse_args()
    stores = parse_backends(args.stores)
    incremental_stores = parse_backends(args.incremental_stores)
    info = machine_info(SOURCES)
    load_before = os.getloadavg()[0]
    bulk: list[dict[str, Any]] = []
    incremental: list[dict[str, Any]] = []
    plan: list[str] = []
    fills: dict[str, float] = {}
    try:
        with scratch_database("postgresql") as source_url:
            source = source_config(source_url, args.chunk_rows)
            create_source(source_url)
            fills["bulk"] = add_source_rows(source_url, 1, args.rows, args.users, args.items)
            print(f"source: {args.rows:,} rows in {fills['bulk']:.1f}s (untimed)", flush=True)
            for backend in stores:
                print(f"bulk sync into {backend} ...", flush=True)
                record = guarded(backend, lambda b=backend: measure_bulk(b, source, args.rows))
                bulk.append(record)
                if "skipped" not in record:
                    print(f"  {record['rows_per_s']:,} rows/s", flush=True)
            if incremental_stores:
                total = args.existing + args.new
                started = time.perf_counter()
                if args.existing > args.rows:
                    add_source_rows(
                        source_url, args.rows + 1, args.existing, args.users, args.items
                    )
                add_source_rows(source_url, args.existing + 1, total, args.users, args.items)
                fills["incremental"] = time.perf_counter() - started
                print(
                    f"source: {total:,} rows in all, {fills['incremental']:.1f}s (untimed)",
                    flush=True,
                )
                plan = explain_watermark_query(source, viewed_at(args.existing))
                print("watermark query plan:\n  " + "\n  ".join(plan), flush=True)
                for backend in incremental_stores:
                    print(f"incremental sync into {backend} (filling the store) ...", flush=True)
                    record = guarded(
                        backend, lambda b=backend: measure_incremental(b, source, args)
                    )
                    incremental.append(record)
                    if "skipped" not in record:
                        print(f"  {record['seconds']:.3f}s", flush=True)
    except Skipped as exc:
        print(f"source: skipped: {exc}")
        bulk.append({"store": "all", "skipped": f"no PostgreSQL source: {exc}"})

    load_after = os.getloadavg()[0]
    index_used = any(WATERMARK_INDEX in line and "Index" in line for line in plan)
    bulk_rows = [bulk_row(r) for r in bulk]
    incremental_rows = [incremental_row(r) for r in incremental]
    print()
    print(f"Bulk sync, target >= {TARGET_ROWS_PER_S:,} rows/s")
    print(format_table(BULK_HEADERS, bulk_rows))
    if incremental_rows:
        print()
        print(f"Incremental sync, target < {TARGET_INCREMENTAL_S:g} s")
        print(format_table(INCREMENTAL_HEADERS, incremental_rows))
        print()
        print(f"Watermark query uses {WATERMARK_INDEX}: {verdict(index_used)}")
    skipped = [
        f"{r['store']} skipped: {r['skipped']}" for r in bulk + incremental if "skipped" in r
    ]
    notes = [
        *skipped,
        f"Source: PostgreSQL table {NAME}(id bigint, customer_id integer, sku text, viewed_at "
        f"timestamp), index {WATERMARK_INDEX} on viewed_at, rows made by generate_series "
        f"({args.users:,} customers, {args.items:,} skus, one row per {STEP_MS} ms); source "
        "fill times are not part of any measurement.",
        "Seconds are wall time around `sync_source(store, source, rejects_dir)` on a migrated "
        "store, connection to the source included; rows/s = rows read / seconds. Chunk size: "
        f"{source_config('postgresql://x/y', args.chunk_rows).chunk_rows:,} rows. Before each "
        "bulk sync a CHECKPOINT (untimed) flushes what the setup left for the server to write.",
        "Incremental: the store's existing rows are written by SQL from the formulas that fill "
        "the source (same external ids, same epoch-ms times) and the watermark by "
        "`write_watermark`; 'fill s' is that setup, untimed. PASS needs the sync to read and "
        "insert exactly the new rows.",
        f"1-minute load average {load_before:.2f} before the run and {load_after:.2f} after "
        f"it, on {os.cpu_count()} cores: above about 1, other processes took CPU from the "
        "sync and its database servers.",
    ]
    tables: list[tuple[str, Any, Any]] = [
        (f"Bulk sync, target >= {TARGET_ROWS_PER_S:,} rows/s", BULK_HEADERS, bulk_rows)
    ]
    if incremental_rows:
        tables.append(
            (
                f"Incremental sync, target < {TARGET_INCREMENTAL_S:g} s",
                INCREMENTAL_HEADERS,
                incremental_rows,
            )
        )
    if plan:
        tables.append(
            (
                "Watermark query plan: EXPLAIN of the reader's statement, declared as its cursor, "
                f"low = {viewed_at(args.existing).isoformat(sep=' ')}; index used: "
                f"{verdict(index_used)}",
                ("plan",),
                [[line] for line in plan],
            )
        )
    paths = write_results(
        args.name,
        "Database source sync benchmark",
        info,
        {
            "config": vars(args) | {"stores": stores, "incremental_stores": incremental_stores},
            "targets": {
                "bulk_rows_per_s": TARGET_ROWS_PER_S,
                "incremental_s": TARGET_INCREMENTAL_S,
            },
            "source_fill_s": {k: round(v, 1) for k, v in fills.items()},
            "load_average": [round(load_before, 2), round(load_after, 2)],
            "bulk": bulk,
            "incremental": incremental,
            "watermark_plan": plan,
            "watermark_index_used": index_used,
        },
        tables,
        notes,
    )
    print("\nwrote " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
