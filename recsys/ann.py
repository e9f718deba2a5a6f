"""The item index: approximate top-k by inner product over a model's item vectors (faiss).

A sequence model over a large catalogue is served by encoding the history (the encoder
graph) and asking this index for the items nearest the user vector, instead of scoring
every item. The index is an inverted file (``IVF<lists>,Flat``): k-means cells over the
item vectors, and a query scans the ``probes`` cells whose centroids score highest with
exact inner products, so the candidates it returns carry their exact scores.
``benchmarks/ann.py`` compares it with HNSW graphs (faiss, usearch, hnswlib). Numpy and
faiss only; no torch.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from recsys.errors import RecsysError

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

LIBRARY = "faiss"
RECALL_K = 10
MIN_RECALL = 0.95  # recall@10 of the index against exact scoring that a version must reach
# About sqrt(I) k-means cells (at most MAX_LISTS); a query scans PROBES of them, doubled up to
# MAX_PROBES until registration finds TUNE_RECALL of the validation users' exact top 10
# (benchmarks/ann.py, 1M clustered items in 1,000 cells: recall@10 0.956 with 8, 0.998 with
# 16, 1.0 with 32 at 0.26 and 0.44 ms a query; 0.74 with 64 of 316 on structureless ones).
# TUNE_RECALL sits above MIN_RECALL so that the test users' recall, measured after, keeps it.
MAX_LISTS = 1024
PROBES = 8
MAX_PROBES = 256
TUNE_RECALL = 0.99
TRAINING_POINTS_PER_LIST = 64  # k-means trains on a sample of this many items per cell
_omp_lock = threading.Lock()


@dataclass(frozen=True)
class IndexParams:
    """How an index is built and searched; recorded in the artifact's config."""

    lists: int
    probes: int = PROBES
    library: str = LIBRARY
    metric: str = "inner_product"

    @classmethod
    def for_items(cls, num_items: int, probes: int = PROBES) -> IndexParams:
        return cls(lists=max(1, min(MAX_LISTS, round(math.sqrt(num_items)))), probes=probes)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> IndexParams:
        if values.get("library") != LIBRARY:
            raise RecsysError(f"item index built with {values.get('library')!r}, not {LIBRARY}")
        return cls(int(values["lists"]), int(values["probes"]))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # an install without the index library
        raise RecsysError(f"serving through an item index needs {LIBRARY}: {exc}") from exc
    return faiss


@contextmanager
def _threads(count: int | None) -> Iterator[Any]:
    """faiss with ``count`` OpenMP threads (one when unset) for a build, then as before."""
    faiss = _faiss()
    with _omp_lock:
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(max(1, count or 1))
        try:
            yield faiss
        finally:
            faiss.omp_set_num_threads(before)


class ItemIndex:
    """An inner-product index over item columns ``0 .. I-1`` (column ``j`` is item ``j + 1``)."""

    def __init__(self, index: Any, params: IndexParams) -> None:
        self._index = index
        self.params = params
        self._search_params = _faiss().SearchParametersIVF(nprobe=params.probes)

    def with_probes(self, probes: int) -> ItemIndex:
        """The same index, searched through ``probes`` cells."""
        return ItemIndex(self._index, replace(self.params, probes=probes))

    @property
    def size(self) -> int:
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @classmethod
    def build(
        cls, vectors: FloatArray, params: IndexParams, *, threads: int | None = None, seed: int = 0
    ) -> ItemIndex:
        """Train the cells on a sample of ``vectors`` (I, D) and add every row."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        count, dim = vectors.shape
        with _threads(threads) as faiss:
            index = faiss.index_factory(dim, f"IVF{params.lists},Flat", faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = seed
            index.cp.min_points_per_centroid = 1  # small catalogues: no warning, same cells
            sample = min(count, params.lists * TRAINING_POINTS_PER_LIST)
            which = np.sort(np.random.default_rng(seed).choice(count, sample, replace=False))
            index.train(vectors[which])
            index.add(vectors)
        return cls(index, params)

    def save(self, path: Path) -> None:
        _faiss().write_index(self._index, str(path))

    @classmethod
    def load(
        cls, path: Path, params: dict[str, Any] | IndexParams, *, threads: int | None = None
    ) -> ItemIndex:
        chosen = params if isinstance(params, IndexParams) else IndexParams.from_dict(params)
        faiss = _faiss()
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:  # faiss reports a bad file as a RuntimeError
            raise RecsysError(f"the item index {path.name} cannot be read: {exc}") from exc
        # Searches use the process's OpenMP threads: the scorer's count, as onnxruntime does.
        faiss.omp_set_num_threads(max(1, threads or 1))
        return cls(index, chosen)

    def search(self, queries: FloatArray, count: int) -> tuple[IntArray, FloatArray]:
        """The ``count`` best columns per query, best first, and their exact inner products:
        (B, C), (B, C). A row with fewer candidates ends in column -1 and score -inf."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        count = max(1, min(count, self.size))
        scores, columns = self._index.search(queries, count, params=self._search_params)
        scores = np.where(columns < 0, -np.inf, scores).astype(np.float32)
        return np.asarray(columns, dtype=np.int64), scores


def exact_top(vectors: FloatArray, queries: FloatArray, k: int) -> IntArray:
    """The exact inner-product top-``k`` columns of each query, best first, (B, k)."""
    k = min(k, len(vectors))
    out = np.empty((len(queries), k), dtype=np.int64)
    chunk = max(1, (1 << 24) // max(1, len(vectors)))  # (chunk, I) scores of at most 64 MB
    for start in range(0, len(queries), chunk):
        scores = np.asarray(queries[start : start + chunk] @ vectors.T)  # (b, I)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        out[start : start + chunk] = np.take_along_axis(top, order, axis=1)
    return out


def recall(found: IntArray, truth: IntArray) -> float:
    """Mean share of each row of ``truth`` (B, k) that ``found`` (B, >= k) also holds."""
    if len(truth) == 0:
        return 1.0
    k = truth.shape[1]
    hits = (found[:, :k, None] == truth[:, None, :]).any(axis=1).sum(axis=1)  # (B,)
    return float(hits.mean() / k)
