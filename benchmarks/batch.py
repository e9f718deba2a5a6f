"""Batch scoring speed: the champion's top-k for every user through onnxruntime, users/s.

Uses the same prepared home as benchmarks/serve.py (a SASRec champion on the Amazon Toys
5-core sequences, about 19k users and 12k items) and runs ``recsys.batch.batch_recommend``:
extract the histories, score in batches, exclude seen items, take the top-k, and replace the
``recommendations`` table in one transaction. Target: >= 5,000 users/s end to end.

``--workers 1,2`` also scores on local Dask clusters of that many worker processes (one
thread and one onnxruntime thread each), as the batch flow does with ``RECSYS_BATCH_WORKERS``:
the users cut into 4 parts per worker, each part scored by ``flows.batch.score_part_task``'s
function on a worker that loads the version once; the flow's Prefect bookkeeping is left out.

    .venv/bin/python benchmarks/batch.py --home ~/.cache/recsys-bench/serve-amazon-toys
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from _common import RESULTS_DIR, format_table, machine_info, markdown_table
from serve import prepare_home

from recsys import registry
from recsys.batch import Scored, batch_recommend, prepare, score_all, store_batch
from recsys.db.engine import create_engine

TARGET_USERS_PER_SECOND = 5000
SOURCES = ("recsys/batch.py", "recsys/ranking.py", "recsys/artifacts.py", "benchmarks/batch.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="prepared (or to prepare) home")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--batch-sizes", default="256,1024,4096")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--train-seconds", type=float, default=120.0)
    parser.add_argument("--synthetic", action="store_true", help="a small synthetic home")
    parser.add_argument("--dataset-path", type=Path, default=None)
    parser.add_argument("--workers", default="", help="Dask worker counts, e.g. 1,2")
    args = parser.parse_args()

    url = f"sqlite:///{args.home / 'recsys.db'}"
    prepared = prepare_home(args.home, url, args)
    engine = create_engine(url)
    artifact = registry.load_artifact(engine, registry.CHAMPION, threads=args.threads)
    print(
        f"champion v{artifact.version} ({artifact.family}), {artifact.num_items:,} items, "
        f"max_len {artifact.max_len}, onnxruntime threads {args.threads}",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        started = time.perf_counter()
        users, _, _, personalised = score_all(artifact, engine, args.k, batch_size)
        score_only = time.perf_counter() - started
        result = batch_recommend(engine, artifact, k=args.k, batch_size=batch_size)
        row = {
            "batch_size": batch_size,
            "users": result.users,
            "personalised": personalised,
            "score_seconds": round(score_only, 2),
            "score_users_per_s": round(len(users) / score_only),
            "end_to_end_seconds": round(result.score_seconds + result.write_seconds, 2),
            "write_seconds": round(result.write_seconds, 2),
            "end_to_end_users_per_s": round(result.users_per_second),
            "rows_written": result.rows,
        }
        rows.append(row)
        print(format_table(list(row), [[str(v) for v in row.values()]]), flush=True)

    dask_rows = [
        dask_row(url, artifact, int(w), args.k, max(int(b) for b in args.batch_sizes.split(",")))
        for w in args.workers.split(",")
        if w.strip()
    ]
    best = max(rows, key=lambda r: r["end_to_end_users_per_s"])
    passed = best["end_to_end_users_per_s"] >= TARGET_USERS_PER_SECOND
    verdict = (
        f"{'PASS' if passed else 'FAIL'}: {best['end_to_end_users_per_s']:,} users/s end to end "
        f"(batch {best['batch_size']}) vs target {TARGET_USERS_PER_SECOND:,}"
    )
    print(verdict)
    info = machine_info(SOURCES)
    out = {
        "machine": info,
        "home": prepared,
        "k": args.k,
        "rows": rows,
        "dask": dask_rows,
        "verdict": verdict,
    }
    name = "batch-smoke" if args.synthetic else "batch"
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    headers = list(rows[0])
    (RESULTS_DIR / f"{name}.md").write_text(
        "\n".join(
            [
                "# Batch recommendations",
                "",
                f"Champion v{artifact.version} ({artifact.family}), {artifact.num_items:,} items, "
                f"top-{args.k} for every user, onnxruntime threads {args.threads}; SQLite.",
                "",
                markdown_table(headers, [[str(r[h]) for h in headers] for r in rows]),
                "",
                verdict,
                "",
                *(
                    [
                        "## On local Dask clusters (worker processes, one thread each)",
                        "",
                        markdown_table(
                            list(dask_rows[0]),
                            [[str(r[h]) for h in dask_rows[0]] for r in dask_rows],
                        ),
                        "",
                    ]
                    if dask_rows
                    else []
                ),
                f"Machine: {info['machine']}, {info['cpu_count']} cores, {info['date']}.",
                f"Command: `{info['command']}`",
                "",
            ]
        )
    )


def dask_row(url: str, artifact: Any, workers: int, k: int, batch_size: int) -> dict[str, Any]:
    """Score every user on a local Dask cluster of ``workers`` processes; store the batch."""
    from distributed import Client, LocalCluster

    from flows.batch import PARTS_PER_WORKER, score_part_task

    os.environ["RECSYS_DATABASE_URL"] = url  # the workers load the version from the registry
    engine = create_engine(url)
    started = time.perf_counter()
    with (
        LocalCluster(n_workers=workers, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as client,
    ):
        ready = time.perf_counter() - started
        begun = time.perf_counter()
        users = prepare(artifact, engine)
        parts = users.parts(workers * PARTS_PER_WORKER)
        score = score_part_task.fn
        futures = client.map(score, [artifact.version] * len(parts), parts,
                             [k] * len(parts), [batch_size] * len(parts), pure=False)  # fmt: skip
        scored = Scored.concat(client.gather(futures))
        score_seconds = time.perf_counter() - begun
    result = store_batch(engine, artifact, users.user_ids, scored, score_seconds)
    row = {
        "workers": workers,
        "users": result.users,
        "cluster_start_seconds": round(ready, 2),
        "score_seconds": round(score_seconds, 2),
        "score_users_per_s": round(result.users / score_seconds),
        "end_to_end_users_per_s": round(result.users_per_second),
        "rows_written": result.rows,
    }
    print(format_table(list(row), [[str(v) for v in row.values()]]), flush=True)
    return row


if __name__ == "__main__":
    main()
