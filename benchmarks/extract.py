"""Extraction benchmark: ``extract(url)`` throughput on 1M rows and peak memory on 10M rows.

Throughput is the best of three in-process runs (target >= 1,000,000 rows/s). Memory is read
inside a fresh child process that only imports ``recsys.data.extract`` and extracts (target:
peak RSS <= 1.5 GB). A measurement, not a test: the script exits 0 whatever the verdict.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
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

from recsys.data.extract import extract
from recsys.data.frames import ImportBatch
from recsys.data.load import load_batch
from recsys.data.synthetic import SyntheticConfig, generate
from recsys.db.engine import create_engine
from recsys.db.migrate import upgrade

TARGET_ROWS_PER_S = 1_000_000
TARGET_PEAK_BYTES = 1_500_000_000
RUNS = 3
SOURCES = ("recsys/data/extract.py", "recsys/data/load.py")
MB = 1_000_000

# Peak RSS comes from VmHWM: ru_maxrss survives execve on Linux, so a child spawned by this
# (large) parent would report the parent's high-water mark; ru_maxrss is kept for comparison.
CHILD_CODE = """
import json, resource, sys, time
from recsys.data.extract import extract

def status_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None

def ru_maxrss_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

baseline = {"rss": status_kib("VmRSS"), "hwm": status_kib("VmHWM"), "ru_maxrss": ru_maxrss_kib()}
started = time.perf_counter()
snapshot = extract(create_engine(sys.argv[1]))
seconds = time.perf_counter() - started
print(json.dumps({
    "rows": len(snapshot),
    "orphans": snapshot.orphans,
    "seconds": seconds,
    "baseline_rss_kib": baseline["rss"],
    "baseline_hwm_kib": baseline["hwm"],
    "baseline_ru_maxrss_kib": baseline["ru_maxrss"],
    "peak_rss_kib": status_kib("VmHWM"),
    "ru_maxrss_kib": ru_maxrss_kib(),
}))
"""

THROUGHPUT_HEADERS = (
    "backend",
    "rows",
    "load s",
    f"extract s (best of {RUNS})",
    "rows/s",
    f">= {TARGET_ROWS_PER_S:,} rows/s",
)
MEMORY_HEADERS = (
    "backend",
    "rows",
    "load s",
    "extract s",
    "rows/s",
    "RSS after imports MB",
    "peak RSS MB",
    "child ru_maxrss MB",
    f"peak <= {TARGET_PEAK_BYTES / MB:,.0f} MB",
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="throughput run size")
    parser.add_argument(
        "--memory-rows", type=int, default=10_000_000, help="memory run size (fresh child)"
    )
    parser.add_argument(
        "--chunk-rows", type=int, default=1_000_000, help="rows per load_batch in the memory run"
    )
    parser.add_argument(
        "--backends", default="sqlite,postgresql", help="comma-separated: sqlite,postgresql"
    )
    parser.add_argument("--skip-memory", action="store_true", help="run the throughput part only")
    return parser.parse_args()


def throughput_config(rows: int) -> SyntheticConfig:
    """The ingest benchmark's shape (1M rows, 50k users, 10k items), scaled with ``rows``."""
    scale = rows / 1_000_000
    return SyntheticConfig(
        num_users=max(1, round(50_000 * scale)),
        num_items=max(10, round(10_000 * scale)),
        num_interactions=rows,
        seed=0,
    )


def memory_config(rows: int) -> SyntheticConfig:
    scale = rows / 10_000_000
    return SyntheticConfig(
        num_users=max(1, round(200_000 * scale)),
        num_items=max(10, round(50_000 * scale)),
        num_interactions=rows,
        seed=1,
    )


def load_in_chunks(url: str, batch: ImportBatch, chunk_rows: int) -> float:
    """Load ``batch`` with one ``load_batch`` per slice; catalogues go with the first slice."""
    engine = create_engine(url)
    events = batch.interactions
    started = time.perf_counter()
    try:
        for start in range(0, len(events), chunk_rows):
            part = events.iloc[start : start + chunk_rows]
            if start == 0:
                chunk = dataclasses.replace(batch, interactions=part, rows_read=len(part))
            else:
                chunk = ImportBatch(
                    batch.kind, batch.source, interactions=part, rows_read=len(part)
                )
            result = load_batch(engine, chunk)
            print(
                f"  loaded {start + len(part):,}/{len(events):,} "
                f"({result.rows_inserted:,} new, {result.seconds:.1f}s)",
                flush=True,
            )
    finally:
        engine.dispose()
    return time.perf_counter() - started


def measure_throughput(backend: str, batch: ImportBatch) -> dict[str, Any]:
    rows = len(batch.interactions)
    with scratch_database(backend) as url:
        upgrade(create_engine(url))
        engine = create_engine(url)
        try:
            load_s = load_batch(engine, batch).seconds
        finally:
            engine.dispose()
        runs = []
        for _ in range(RUNS):
            started = time.perf_counter()
            snapshot = extract(create_engine(url))
            runs.append(time.perf_counter() - started)
            if len(snapshot) != rows:
                raise RuntimeError(f"extracted {len(snapshot):,} rows, loaded {rows:,}")
            del snapshot
    best = min(runs)
    return {
        "backend": backend,
        "rows": rows,
        "load_s": round(load_s, 3),
        "extract_runs_s": [round(s, 3) for s in runs],
        "extract_best_s": round(best, 3),
        "rows_per_s": round(rows / best),
        "pass": rows / best >= TARGET_ROWS_PER_S,
    }


def measure_memory(backend: str, batch: ImportBatch, chunk_rows: int) -> dict[str, Any]:
    rows = len(batch.interactions)
    with scratch_database(backend) as url:
        upgrade(create_engine(url))
        load_s = load_in_chunks(url, batch, chunk_rows)
        print("  extracting in a fresh child process ...", flush=True)
        child = subprocess.run(
            [sys.executable, "-c", CHILD_CODE, url], capture_output=True, text=True, check=False
        )
    if child.returncode != 0:
        raise RuntimeError(f"child failed ({child.returncode}): {child.stderr.strip()[-2000:]}")
    report = json.loads(child.stdout.strip().splitlines()[-1])
    if report["rows"] != rows:
        raise RuntimeError(f"child extracted {report['rows']:,} rows, loaded {rows:,}")
    return {
        "backend": backend,
        "rows": rows,
        "load_s": round(load_s, 3),
        "extract_s": round(report["seconds"], 3),
        "rows_per_s": round(rows / report["seconds"]),
        **{k: v for k, v in report.items() if k.endswith("_kib") or k == "orphans"},
        "pass": report["peak_rss_kib"] * 1024 <= TARGET_PEAK_BYTES,
    }


def run_backends(backends: list[str], measure: Any, *args: Any) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for backend in backends:
        print(f"{backend}: ...", flush=True)
        try:
            records.append(measure(backend, *args))
        except Skipped as exc:
            print(f"{backend}: skipped: {exc}")
            records.append({"backend": backend, "skipped": str(exc)})
    return records


def mb(kib: int) -> str:
    return f"{kib * 1024 / MB:,.0f}"


def throughput_row(record: dict[str, Any]) -> list[str]:
    if "skipped" in record:
        return [record["backend"], "skipped", *["-"] * (len(THROUGHPUT_HEADERS) - 2)]
    return [
        record["backend"],
        f"{record['rows']:,}",
        f"{record['load_s']:.2f}",
        f"{record['extract_best_s']:.2f}",
        f"{record['rows_per_s']:,}",
        verdict(record["pass"]),
    ]


def memory_row(record: dict[str, Any]) -> list[str]:
    if "skipped" in record:
        return [record["backend"], "skipped", *["-"] * (len(MEMORY_HEADERS) - 2)]
    return [
        record["backend"],
        f"{record['rows']:,}",
        f"{record['load_s']:.1f}",
        f"{record['extract_s']:.2f}",
        f"{record['rows_per_s']:,}",
        mb(record["baseline_rss_kib"]),
        mb(record["peak_rss_kib"]),
        mb(record["ru_maxrss_kib"]),
        verdict(record["pass"]),
    ]


def main() -> None:
    args = parse_args()
    backends = parse_backends(args.backends)
    info = machine_info(SOURCES)

    config = throughput_config(args.rows)
    batch = generate(config)
    print(f"generated {len(batch.interactions):,} interactions for the throughput run")
    throughput = run_backends(backends, measure_throughput, batch)
    del batch

    memory: list[dict[str, Any]] = []
    memory_cfg = None if args.skip_memory else memory_config(args.memory_rows)
    if memory_cfg is not None:
        started = time.perf_counter()
        big = generate(memory_cfg)
        print(
            f"generated {len(big.interactions):,} interactions for the memory run "
            f"in {time.perf_counter() - started:.1f}s"
        )
        memory = run_backends(backends, measure_memory, big, args.chunk_rows)
        del big

    tables = [
        (
            f"Throughput: extract(url), best of {RUNS}, target >= {TARGET_ROWS_PER_S:,} rows/s",
            THROUGHPUT_HEADERS,
            [throughput_row(r) for r in throughput],
        )
    ]
    if memory_cfg is not None:
        tables.append(
            (
                f"Memory: extract(url) in a fresh child, target peak RSS "
                f"<= {TARGET_PEAK_BYTES / MB:,.0f} MB",
                MEMORY_HEADERS,
                [memory_row(r) for r in memory],
            )
        )
    for heading, headers, rows in tables:
        print(f"\n{heading}")
        print(format_table(headers, rows))
    skipped = sorted(
        {f"{r['backend']} skipped: {r['skipped']}" for r in throughput + memory if "skipped" in r}
    )
    for line in skipped:
        print(line)

    notes = [
        *skipped,
        f"Throughput data: {config}; loaded with one load_batch (load s).",
        "MB = 10^6 bytes. Peak RSS is the child's VmHWM read after extract returns; RSS after "
        "imports is its VmRSS after `from recsys.data.extract import extract` (a driver that "
        "extract imports lazily, ADBC for PostgreSQL, counts in the peak).",
        "child ru_maxrss is getrusage(RUSAGE_SELF).ru_maxrss read in the same child: Linux "
        "carries the high-water mark across execve, so it reports at least the parent's own "
        "peak (the benchmark process holding the generated frame) and is not the child's.",
    ]
    if memory_cfg is not None:
        notes.insert(
            len(skipped) + 1,
            f"Memory data: {memory_cfg}; loaded with load_batch on slices of "
            f"{args.chunk_rows:,} interactions (catalogues with the first slice); load s is "
            "the total.",
        )
    paths = write_results(
        "extract",
        "Extraction benchmark",
        info,
        {
            "config": vars(args) | {"backends": backends},
            "target_rows_per_s": TARGET_ROWS_PER_S,
            "target_peak_rss_bytes": TARGET_PEAK_BYTES,
            "throughput": throughput,
            "memory": memory if memory_cfg is not None else "skipped (--skip-memory)",
        },
        tables,
        notes,
    )
    print("\nwrote " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
