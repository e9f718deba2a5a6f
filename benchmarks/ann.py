"""Nearest-neighbour indexes for big catalogues: usearch, faiss and hnswlib against exact scoring.

Synthetic item vectors shaped like a sequence model's item table (D=64, topics and subtopics,
norms that vary like popularity) and user vectors near the items they would score highest.
For every index: build time, file size, resident memory, recall@10 against the exact
inner-product top-10, and query latency (one query at a time, a batch of 256, and 8
concurrent one-query requests). For exact scoring (numpy matmul + argpartition, one BLAS
thread as the service's scorer runs): latency at growing catalogue sizes with 8 concurrent
requests, as threads and as the service's micro-batches of 8; the largest size whose batch
p99 stays under 50 ms is where ``RECSYS_ANN_MIN_ITEMS`` comes from.

    .venv/bin/python benchmarks/ann.py            # 100k and 1M items, about 10 minutes
    .venv/bin/python benchmarks/ann.py --quick    # 20k and 100k items, about 2 minutes
"""

from __future__ import annotations

import os

# One BLAS thread, as a request of the service gets (RECSYS_SCORER_THREADS=1); set before numpy.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import gc
import multiprocessing
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import psutil
from _common import format_table, machine_info, write_results

from recsys.ann import IndexParams

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

K = 10
BUDGET_MS = 50.0  # p99 of one request at concurrency 8
CONCURRENCY = 8
BIG = 200_000  # catalogues above this are measured with --big-libraries only
SOURCES = ("benchmarks/ann.py", "recsys/ann.py")


def item_vectors(count: int, dim: int, seed: int, kind: str = "topics") -> FloatArray:
    """Items as topic + subtopic + noise, norms spread like popularity; or plain Gaussian."""
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        return rng.standard_normal((count, dim), dtype=np.float32) / np.sqrt(dim)
    topics = rng.standard_normal((64, dim), dtype=np.float32)
    subtopics = topics[np.arange(1024) % 64] + 0.6 * rng.standard_normal((1024, dim), np.float32)
    which = rng.integers(0, len(subtopics), count)
    vectors = subtopics[which] + 0.45 * rng.standard_normal((count, dim), dtype=np.float32)
    vectors *= np.exp(rng.normal(0.0, 0.2, (count, 1))).astype(np.float32)
    out: FloatArray = (vectors / np.sqrt(dim)).astype(np.float32)
    return out


def user_vectors(items: FloatArray, count: int, seed: int) -> FloatArray:
    """Users near one item they would score highest, pulled a little towards two others."""
    rng = np.random.default_rng(seed + 1)
    anchor = items[rng.integers(0, len(items), count)]
    others = items[rng.integers(0, len(items), (count, 2))].mean(axis=1)
    noise = 0.05 * rng.standard_normal(anchor.shape, dtype=np.float32)
    out: FloatArray = (0.8 * anchor + 0.2 * others + noise).astype(np.float32)
    return out


def exact_top(items: FloatArray, users: FloatArray, k: int = K, chunk: int = 64) -> IntArray:
    """The exact inner-product top-k columns of each user, (Q, k)."""
    out = np.empty((len(users), k), dtype=np.int64)
    for start in range(0, len(users), chunk):
        scores = users[start : start + chunk] @ items.T  # (q, I)
        out[start : start + chunk] = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return out


def recall(found: IntArray, truth: IntArray) -> float:
    hits = [len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits)) / truth.shape[1]


class Candidate:
    """One library and its build parameters; ``knob`` is the search-time setting swept."""

    name = ""
    knob_name = "ef"

    def __init__(self, dim: int, threads: int) -> None:
        self.dim = dim
        self.threads = threads

    def build(self, items: FloatArray) -> None:
        raise NotImplementedError

    def set_knob(self, value: int) -> None:
        raise NotImplementedError

    def search(self, users: FloatArray, count: int, threads: int) -> IntArray:
        raise NotImplementedError

    def save(self, path: Path) -> None:
        raise NotImplementedError

    def params(self) -> str:
        raise NotImplementedError


class USearch(Candidate):
    name = "usearch"

    def __init__(self, dim: int, threads: int, connectivity: int, expansion_add: int) -> None:
        super().__init__(dim, threads)
        from usearch.index import Index

        self.connectivity, self.expansion_add = connectivity, expansion_add
        self.index = Index(
            ndim=dim,
            metric="ip",
            dtype="f32",
            connectivity=connectivity,
            expansion_add=expansion_add,
        )

    def build(self, items: FloatArray) -> None:
        self.index.add(np.arange(len(items)), items, threads=self.threads)

    def set_knob(self, value: int) -> None:
        self.index.expansion_search = value

    def search(self, users: FloatArray, count: int, threads: int) -> IntArray:
        return np.asarray(self.index.search(users, count, threads=threads).keys, dtype=np.int64)

    def save(self, path: Path) -> None:
        self.index.save(str(path))

    def params(self) -> str:
        return f"M={self.connectivity} efC={self.expansion_add}"


class HnswLib(Candidate):
    name = "hnswlib"

    def __init__(self, dim: int, threads: int, m: int, ef_construction: int) -> None:
        super().__init__(dim, threads)
        import hnswlib

        self.m, self.ef_construction = m, ef_construction
        self.index = hnswlib.Index(space="ip", dim=dim)

    def build(self, items: FloatArray) -> None:
        self.index.init_index(
            max_elements=len(items), M=self.m, ef_construction=self.ef_construction
        )
        self.index.add_items(items, np.arange(len(items)), num_threads=self.threads)

    def set_knob(self, value: int) -> None:
        self.index.set_ef(value)

    def search(self, users: FloatArray, count: int, threads: int) -> IntArray:
        labels, _ = self.index.knn_query(users, count, num_threads=threads)
        return np.asarray(labels, dtype=np.int64)

    def save(self, path: Path) -> None:
        self.index.save_index(str(path))

    def params(self) -> str:
        return f"M={self.m} efC={self.ef_construction}"


class FaissHNSW(Candidate):
    name = "faiss-hnsw"

    def __init__(self, dim: int, threads: int, m: int, ef_construction: int) -> None:
        super().__init__(dim, threads)
        import faiss

        self.faiss = faiss
        self.m, self.ef_construction = m, ef_construction
        self.index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = ef_construction

    def build(self, items: FloatArray) -> None:
        self.faiss.omp_set_num_threads(self.threads)
        self.index.add(items)

    def set_knob(self, value: int) -> None:
        self.index.hnsw.efSearch = value

    def search(self, users: FloatArray, count: int, threads: int) -> IntArray:
        self.faiss.omp_set_num_threads(threads)
        _, labels = self.index.search(users, count)
        return np.asarray(labels, dtype=np.int64)

    def save(self, path: Path) -> None:
        self.faiss.write_index(self.index, str(path))

    def params(self) -> str:
        return f"M={self.m} efC={self.ef_construction}"


class FaissIVF(Candidate):
    name = "faiss-ivf"
    knob_name = "nprobe"

    def __init__(self, dim: int, threads: int, lists: int) -> None:
        super().__init__(dim, threads)
        import faiss

        self.faiss = faiss
        self.lists = lists
        self.quantizer = faiss.IndexFlatIP(dim)
        self.index = faiss.IndexIVFFlat(self.quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)

    def build(self, items: FloatArray) -> None:
        self.faiss.omp_set_num_threads(self.threads)
        sample = np.random.default_rng(0).choice(len(items), min(len(items), 64 * self.lists))
        self.index.train(items[np.sort(sample)])
        self.index.add(items)

    def set_knob(self, value: int) -> None:
        self.index.nprobe = value

    def search(self, users: FloatArray, count: int, threads: int) -> IntArray:
        self.faiss.omp_set_num_threads(threads)
        _, labels = self.index.search(users, count)
        return np.asarray(labels, dtype=np.int64)

    def save(self, path: Path) -> None:
        self.faiss.write_index(self.index, str(path))

    def params(self) -> str:
        return f"lists={self.lists}"


def candidates(
    names: list[str], dim: int, threads: int, size: int, m: int, efc: int
) -> list[tuple[str, Callable[[], Candidate]]]:
    makers: dict[str, Callable[[], Candidate]] = {
        "usearch": lambda: USearch(dim, threads, m, efc),
        "hnswlib": lambda: HnswLib(dim, threads, m, efc),
        "faiss-hnsw": lambda: FaissHNSW(dim, threads, m, efc),
        "faiss-ivf": lambda: FaissIVF(dim, threads, IndexParams.for_items(size).lists),
    }
    return [(name, makers[name]) for name in names]


def percentiles(seconds: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.asarray(seconds) * 1000, [50, 99])
    return float(p50), float(p99)


def one_at_a_time(run: Callable[[int], object], count: int) -> tuple[float, float]:
    seconds = []
    for n in range(count):
        started = time.perf_counter()
        run(n)
        seconds.append(time.perf_counter() - started)
    return percentiles(seconds)


def concurrent(run: Callable[[int], object], per_client: int) -> tuple[float, float]:
    """p50 and p99 of one request while ``CONCURRENCY`` closed-loop clients send them."""
    seconds: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(CONCURRENCY)

    def client(offset: int) -> None:
        mine = []
        start.wait()
        for n in range(per_client):
            began = time.perf_counter()
            run(offset * per_client + n)
            mine.append(time.perf_counter() - began)
        with lock:
            seconds.extend(mine)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(CONCURRENCY)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return percentiles(seconds)


def measure_index(
    candidate: Candidate,
    kind: str,
    items: FloatArray,
    users: FloatArray,
    truth: IntArray,
    knobs: list[int],
    singles: int,
) -> list[dict[str, Any]]:
    process = psutil.Process()
    gc.collect()
    before = process.memory_full_info().uss
    started = time.perf_counter()
    candidate.build(items)
    build_seconds = time.perf_counter() - started
    resident = (process.memory_full_info().uss - before) / 1e6
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "index"
        candidate.save(path)
        size_mb = path.stat().st_size / 1e6
    rows = []
    for knob in knobs:
        candidate.set_knob(knob)
        found = candidate.search(users, K, candidate.threads)
        single = one_at_a_time(lambda n: candidate.search(users[n : n + 1], K, 1), singles)
        batch = users[:256]
        began = time.perf_counter()
        candidate.search(batch, K, candidate.threads)
        batch_ms = (time.perf_counter() - began) * 1000 / len(batch)
        loaded = concurrent(
            lambda n: candidate.search(users[n % len(users)][None], K, 1), singles // 4
        )
        eights = one_at_a_time(
            lambda n: candidate.search(users[(n * CONCURRENCY) % len(users) :][:CONCURRENCY], K, 1),
            max(singles // CONCURRENCY, 5),
        )
        rows.append(
            {
                "library": candidate.name,
                "items": len(items),
                "vectors": kind,
                "params": candidate.params(),
                "knob": f"{candidate.knob_name}={knob}",
                "build_s": round(build_seconds, 1),
                "file_mb": round(size_mb, 1),
                "memory_mb": round(resident, 1),
                "recall@10": round(recall(found, truth), 4),
                "p50_ms": round(single[0], 3),
                "p99_ms": round(single[1], 3),
                "batch_ms_per_query": round(batch_ms, 4),
                "c8_p50_ms": round(loaded[0], 3),
                "c8_p99_ms": round(loaded[1], 3),
                "batch8_p50_ms": round(eights[0], 3),
                "batch8_p99_ms": round(eights[1], 3),
            }
        )
        print(format_table(list(rows[-1]), [[str(v) for v in rows[-1].values()]]), flush=True)
    return rows


def isolated(make: Callable[[], Candidate], *args: Any) -> list[dict[str, Any]]:
    """:func:`measure_index` in a forked child: the index's memory is its own, and freed
    with the child. The parent never imports the libraries, so forking is safe."""
    context = multiprocessing.get_context("fork")
    results: Any = context.Queue()

    def child() -> None:
        results.put(measure_index(make(), *args))

    process = context.Process(target=child)
    process.start()
    rows: list[dict[str, Any]] = results.get()
    process.join()
    return rows


def measure_exact(sizes: list[int], dim: int, seed: int, requests: int, rounds: int) -> list[Any]:
    """Exact top-k of one user (matmul + argpartition + sort of the k): alone, with 8
    concurrent requests, and 8 users in one matmul (the service batches concurrent
    ``recommend`` calls into one run). The sizes take turns over ``rounds`` rounds; each
    number is the median of the rounds', so a burst of load on this shared machine moves
    one round, not the result."""
    catalogues = {size: item_vectors(size, dim, seed) for size in sizes}
    users = user_vectors(catalogues[sizes[0]], requests, seed)

    def one(items: FloatArray, n: int) -> IntArray:
        scores = items @ users[n % len(users)]  # (I,)
        top = np.argpartition(-scores, K - 1)[:K]
        return top[np.argsort(-scores[top], kind="stable")]

    def batch_of_eight(items: FloatArray, n: int) -> None:
        rows = users[(n * CONCURRENCY) % len(users) :][:CONCURRENCY]
        for row in rows @ items.T:  # (8, I)
            top = np.argpartition(-row, K - 1)[:K]
            top[np.argsort(-row[top], kind="stable")]

    runs: dict[int, list[list[float]]] = {size: [] for size in sizes}
    for _ in range(rounds):
        for size, items in catalogues.items():
            one(items, 0)
            single = one_at_a_time(lambda n, items=items: one(items, n), requests)
            loaded = concurrent(
                lambda n, items=items: one(items, n), max(requests // CONCURRENCY, 5)
            )
            batched = one_at_a_time(
                lambda n, items=items: batch_of_eight(items, n), max(requests // CONCURRENCY, 5)
            )
            runs[size].append([*single, *loaded, *batched])
    rows = []
    for size in sizes:
        p50, p99, c8_p50, c8_p99, b8_p50, b8_p99 = np.median(np.asarray(runs[size]), axis=0)
        row = {
            "items": size,
            "p50_ms": round(p50, 2),
            "p99_ms": round(p99, 2),
            "c8_p50_ms": round(c8_p50, 2),
            "c8_p99_ms": round(c8_p99, 2),
            "batch8_p50_ms": round(b8_p50, 2),
            "batch8_p99_ms": round(b8_p99, 2),
            "within_budget": bool(b8_p99 <= BUDGET_MS),
        }
        rows.append(row)
        print(format_table(list(row), [[str(v) for v in row.values()]]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="catalogue sizes of the indexes")
    parser.add_argument("--exact-sizes", default="50000,100000,150000,200000,300000,500000,1000000")
    parser.add_argument("--libraries", default="usearch,faiss-hnsw,hnswlib,faiss-ivf")
    parser.add_argument(
        "--big-libraries",
        default="faiss-ivf,faiss-hnsw",
        help=f"the libraries measured above {BIG:,} items (an HNSW build of 1M items takes "
        "minutes on 2 cores; name all four for the whole comparison)",
    )
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the exact sizes")
    parser.add_argument("--queries", type=int, default=400, help="users for recall")
    parser.add_argument("--singles", type=int, default=200, help="one-query latency samples")
    parser.add_argument("--m", type=int, default=16, help="HNSW connectivity")
    parser.add_argument("--ef-construction", type=int, default=64)
    parser.add_argument("--efs", default="64,128,256", help="HNSW search expansions")
    parser.add_argument("--nprobes", default="8,16,32,64")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="build threads")
    parser.add_argument(
        "--gaussian-sizes", default="100000", help="sizes also measured on Gaussian vectors"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="", help="results/<name>.md (default ann)")
    parser.add_argument("--quick", action="store_true", help="20k and 100k items, fewer queries")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.exact_sizes = "20000,100000", "20000,100000,200000"
        args.gaussian_sizes = "20000"
        args.queries, args.singles = 200, 100
    libraries = [name.strip() for name in args.libraries.split(",") if name.strip()]
    big_libraries = [name.strip() for name in args.big_libraries.split(",") if name.strip()]
    began = time.perf_counter()
    load_before = os.getloadavg()

    print(f"exact scoring, {CONCURRENCY} concurrent requests, p99 budget {BUDGET_MS:g} ms")
    sizes = [int(size) for size in args.exact_sizes.split(",")]
    exact = measure_exact(sizes, args.dim, args.seed, args.singles, args.rounds)
    indexed: list[dict[str, Any]] = []
    cases = [("topics", int(s)) for s in args.sizes.split(",") if s]
    cases += [("gaussian", int(s)) for s in args.gaussian_sizes.split(",") if s]
    for kind, size in cases:
        items = item_vectors(size, args.dim, args.seed, kind)
        users = user_vectors(items, args.queries, args.seed)
        started = time.perf_counter()
        truth = exact_top(items, users)
        print(
            f"\n{size:,} items: exact top-{K} of {len(users)} users in "
            f"{time.perf_counter() - started:.1f} s",
            flush=True,
        )
        chosen = libraries if size <= BIG else big_libraries
        for library, make in candidates(
            chosen, args.dim, args.threads, size, args.m, args.ef_construction
        ):
            knobs = args.nprobes if library == "faiss-ivf" else args.efs
            indexed += isolated(
                make, kind, items, users, truth, [int(v) for v in knobs.split(",")], args.singles
            )

    fits = [row["items"] for row in exact if row["within_budget"]]
    largest = max(fits) if fits else None
    info = machine_info(SOURCES)
    info["load_average_before"] = " ".join(f"{v:.1f}" for v in load_before)
    info["load_average_after"] = " ".join(f"{v:.1f}" for v in os.getloadavg())
    info["seconds"] = round(time.perf_counter() - began)
    exact_headers = list(exact[0])
    index_headers = list(indexed[0]) if indexed else []
    name = args.name or ("ann-quick" if args.quick else "ann")
    write_results(
        name,
        "Nearest-neighbour indexes against exact scoring",
        info,
        {
            "dim": args.dim,
            "queries": args.queries,
            "k": K,
            "budget_ms": BUDGET_MS,
            "concurrency": CONCURRENCY,
            "exact": exact,
            "indexes": indexed,
            "largest_exact_within_budget": largest,
        },
        [
            (
                f"Exact scoring (D={args.dim}, one BLAS thread; c8: {CONCURRENCY} concurrent "
                f"requests; batch8: {CONCURRENCY} users in one matmul)",
                exact_headers,
                [[str(r[h]) for h in exact_headers] for r in exact],
            ),
            (
                f"Indexes (D={args.dim}, {args.queries} users, "
                f"build on {args.threads} threads, queries on one)",
                index_headers,
                [[str(r[h]) for h in index_headers] for r in indexed],
            ),
        ],
        notes=[
            f"largest catalogue whose exact scoring keeps p99 <= {BUDGET_MS:g} ms for "
            f"{CONCURRENCY} concurrent requests in one batch (how the service runs concurrent "
            f"`recommend` calls): {largest if largest else 'none measured'}",
            "c8: the same requests from 8 Python threads, each its own matmul; they queue "
            "for the GIL and the 2 cores, the endpoints that are not batched",
            "memory_mb is the growth of the measuring process's own memory (USS) over the "
            "build, the vectors excluded; file_mb is the saved index",
            "the machine is shared: the load averages above say how busy it was",
        ],
    )
    print(f"\nlargest exact catalogue within budget: {largest}; {info['seconds']} s in all")


if __name__ == "__main__":
    main()
