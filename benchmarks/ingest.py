"""Ingest throughput: ``load_batch`` of synthetic interactions into an empty store, then again.

The second load is a re-import of the same batch and must insert nothing. Target: both loads
at >= 100,000 rows/s. A measurement, not a test: the script exits 0 whatever the verdict.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from _common import (
    Skipped,
    format_table,
    machine_info,
    parse_backends,
    scratch_database,
    verdict,
    write_results,
)

from recsys.data.frames import ImportBatch
from recsys.data.load import load_batch
from recsys.data.synthetic import SyntheticConfig, generate
from recsys.db.engine import create_engine
from recsys.db.migrate import upgrade

TARGET_ROWS_PER_S = 100_000
SOURCES = ("recsys/data/load.py", "recsys/db/schema.py", "migrations/versions")
HEADERS = (
    "backend",
    "rows",
    "first load s",
    "rows/s",
    "re-import s",
    "rows/s",
    "inserted on re-import",
    f">= {TARGET_ROWS_PER_S:,} rows/s",
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--interactions", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--backends", default="sqlite,postgresql", help="comma-separated: sqlite,postgresql"
    )
    return parser.parse_args()


def measure(backend: str, batch: ImportBatch) -> dict[str, Any]:
    """Migrate a fresh database, then time the first load and the re-import of ``batch``."""
    rows = len(batch.interactions)
    with scratch_database(backend) as url:
        upgrade(create_engine(url))
        engine = create_engine(url)
        try:
            started = time.perf_counter()
            first = load_batch(engine, batch)
            first_s = time.perf_counter() - started
            started = time.perf_counter()
            again = load_batch(engine, batch)
            again_s = time.perf_counter() - started
        finally:
            engine.dispose()
    first_rate, again_rate = rows / first_s, rows / again_s
    passed = (
        min(first_rate, again_rate) >= TARGET_ROWS_PER_S
        and first.rows_inserted == rows
        and again.rows_inserted == 0
    )
    return {
        "backend": backend,
        "rows": rows,
        "first_load_s": round(first_s, 3),
        "first_load_rows_per_s": round(first_rate),
        "first_load_inserted": first.rows_inserted,
        "reimport_s": round(again_s, 3),
        "reimport_rows_per_s": round(again_rate),
        "reimport_inserted": again.rows_inserted,
        "users_total": again.users_total,
        "items_total": again.items_total,
        "pass": passed,
    }


def table_row(record: dict[str, Any]) -> list[str]:
    if "skipped" in record:
        return [record["backend"], "skipped", *["-"] * (len(HEADERS) - 2)]
    return [
        record["backend"],
        f"{record['rows']:,}",
        f"{record['first_load_s']:.2f}",
        f"{record['first_load_rows_per_s']:,}",
        f"{record['reimport_s']:.2f}",
        f"{record['reimport_rows_per_s']:,}",
        f"{record['reimport_inserted']:,}",
        verdict(record["pass"]),
    ]


def main() -> None:
    args = parse_args()
    backends = parse_backends(args.backends)
    info = machine_info(SOURCES)
    config = SyntheticConfig(
        num_users=args.users,
        num_items=args.items,
        num_interactions=args.interactions,
        seed=args.seed,
    )
    started = time.perf_counter()
    batch = generate(config)
    generate_s = time.perf_counter() - started
    print(f"generated {len(batch.interactions):,} interactions in {generate_s:.1f}s")

    records: list[dict[str, Any]] = []
    for backend in backends:
        print(f"{backend}: loading ...", flush=True)
        try:
            records.append(measure(backend, batch))
        except Skipped as exc:
            print(f"{backend}: skipped: {exc}")
            records.append({"backend": backend, "skipped": str(exc)})

    rows = [table_row(r) for r in records]
    print()
    print(f"Target: >= {TARGET_ROWS_PER_S:,} rows/s for the first load and the re-import")
    print(format_table(HEADERS, rows))
    skipped = [f"{r['backend']} skipped: {r['skipped']}" for r in records if "skipped" in r]
    for line in skipped:
        print(line)
    notes = [
        *skipped,
        f"Synthetic data: {config}; generated in {generate_s:.1f}s (not timed below).",
        "Seconds are wall time around `load_batch(engine, batch)` after `upgrade(engine)` on a "
        "freshly created database; rows/s = interactions in the batch / seconds.",
        "PASS needs both loads at the target, every row inserted by the first load and none "
        "by the re-import.",
    ]
    paths = write_results(
        "ingest",
        "Ingest benchmark",
        info,
        {
            "config": vars(args) | {"backends": backends},
            "target_rows_per_s": TARGET_ROWS_PER_S,
            "generate_s": round(generate_s, 3),
            "results": records,
        },
        [(f"load_batch, target >= {TARGET_ROWS_PER_S:,} rows/s", HEADERS, rows)],
        notes,
    )
    print("\nwrote " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
