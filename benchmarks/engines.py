"""Dask or Ray for batch scoring: what each engine costs on one machine, measured side by side.

Both engines run the same work, in a fresh local cluster of ``--workers`` worker processes:

- start: seconds from nothing to a cluster that answers (``LocalCluster`` + ``Client``;
  ``ray.init``);
- round trip: median seconds of one tiny task submitted and waited for, 50 times;
- small tasks: ``--tasks`` tasks of 1 ms of numpy each, submitted at once: tasks/s;
- scoring-like tasks: parts of a (users x items) score matrix (``--users`` users, ``--items``
  items, dimension 64, float32), each part a matrix product and an argpartition for the top 10,
  returned to the driver: users/s;
- memory: the resident memory of the driver and every process the engine started, in MB.

Run it in an environment that has both (``ray`` is not a dependency of the project):

    python -m venv /tmp/engines && /tmp/engines/bin/pip install ray "dask[distributed]" numpy psutil
    /tmp/engines/bin/python benchmarks/engines.py --workers 2

The results go to benchmarks/results/engines.md and .json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil

RESULTS = Path(__file__).resolve().parent / "results"


def tiny(x: int) -> int:
    return x + 1


def busy(seed: int) -> float:
    rng = np.random.default_rng(seed)
    a = rng.random((64, 64), dtype=np.float32)
    return float((a @ a).sum())


def score_part(start: int, stop: int, items: int, dim: int, seed: int) -> np.ndarray:
    """Top 10 of ``stop - start`` users over ``items`` items, 1,024 users at a time (as the
    batch scorer goes)."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((items, dim), dtype=np.float32)
    users = rng.standard_normal((stop - start, dim), dtype=np.float32)
    out = np.empty((stop - start, 10), dtype=np.int64)
    for row in range(0, stop - start, 1024):
        scores = users[row : row + 1024] @ vectors.T
        out[row : row + 1024] = np.argpartition(-scores, 10, axis=1)[:, :10]
    return out


def tree_rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in set(pids):
        try:
            process = psutil.Process(pid)
            total += process.memory_info().rss
            total += sum(c.memory_info().rss for c in process.children(recursive=True))
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


def measure(
    name: str,
    start: Callable[[], Any],
    submit: Callable[[Any, Callable[..., Any], tuple[Any, ...]], Any],
    gather: Callable[[Any, list[Any]], list[Any]],
    stop: Callable[[Any], None],
    args: argparse.Namespace,
) -> dict[str, Any]:
    began = time.perf_counter()
    engine = start()
    gather(engine, [submit(engine, tiny, (0,))])  # a cluster that answers
    started = time.perf_counter() - began
    trips = []
    for n in range(50):
        t = time.perf_counter()
        gather(engine, [submit(engine, tiny, (n,))])
        trips.append(time.perf_counter() - t)
    t = time.perf_counter()
    gather(engine, [submit(engine, busy, (n,)) for n in range(args.tasks)])
    small = args.tasks / (time.perf_counter() - t)
    bounds = np.linspace(0, args.users, args.parts + 1).astype(int).tolist()
    t = time.perf_counter()
    parts = gather(
        engine,
        [
            submit(engine, score_part, (a, b, args.items, 64, n))
            for n, (a, b) in enumerate(itertools.pairwise(bounds))
        ],
    )
    scoring = args.users / (time.perf_counter() - t)
    assert sum(len(p) for p in parts) == args.users
    rss = tree_rss_mb([os.getpid()])
    stop(engine)
    row = {
        "engine": name,
        "workers": args.workers,
        "start_s": round(started, 2),
        "round_trip_ms": round(1000 * statistics.median(trips), 2),
        "small_tasks_per_s": round(small),
        "scoring_users_per_s": round(scoring),
        "rss_mb": round(rss),
    }
    print(row, flush=True)
    return row


def dask_row(args: argparse.Namespace) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    def start() -> Any:
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True)
        return cluster, Client(cluster)

    def stop(engine: Any) -> None:
        engine[1].close()
        engine[0].close()

    return measure(
        "dask",
        start,
        lambda e, f, a: e[1].submit(f, *a, pure=False),
        lambda e, futures: e[1].gather(futures),
        stop,
        args,
    )


def ray_row(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    remotes: dict[Callable[..., Any], Any] = {}

    def start() -> Any:
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        return ray

    def submit(engine: Any, f: Callable[..., Any], a: tuple[Any, ...]) -> Any:
        if f not in remotes:
            remotes[f] = engine.remote(num_cpus=1)(f)
        return remotes[f].remote(*a)

    return measure(
        "ray",
        start,
        submit,
        lambda e, refs: e.get(refs),
        lambda e: e.shutdown(),
        args,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=12_000)
    parser.add_argument("--parts", type=int, default=8)
    args = parser.parse_args()
    rows = [dask_row(args), ray_row(args)]
    headers = list(rows[0])
    table = "\n".join(
        [
            "| " + " | ".join(headers) + " |",
            "| " + " | ".join("---" for _ in headers) + " |",
            *("| " + " | ".join(str(r[h]) for h in headers) + " |" for r in rows),
        ]
    )
    info = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "versions": {m: _version(m) for m in ("dask", "distributed", "ray", "numpy")},
        "args": vars(args),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "engines.json").write_text(json.dumps({**info, "rows": rows}, indent=2) + "\n")
    (RESULTS / "engines.md").write_text(
        "# Dask or Ray on one machine\n\n"
        + "\n".join(f"- {k}: `{v}`" for k, v in info.items())
        + "\n\n"
        + table
        + "\n"
    )
    print(table)


def _version(module: str) -> str:
    try:
        return str(__import__(module).__version__)
    except ImportError:
        return "absent"


if __name__ == "__main__":
    main()
