"""EASE: a closed-form linear item-item autoencoder (Steck, WWW 2019)."""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from recsys.data.features import SideInfo
from recsys.data.splits import TrainSet
from recsys.models.base import BatchKind, InputKind, Query, Recommender
from recsys.models.space import FloatRange, SearchSpace

logger = logging.getLogger(__name__)

# Closed form: no optimiser. Unless ``l2`` is given, it is chosen on validation (``search``).
TRAIN_DEFAULTS: dict[str, float | int] = {}

# Item columns of the user-item matrix densified at a time while building the Gram matrix,
# fewer when there are many users: a block holds at most _BLOCK_FLOATS floats (256 MB).
_GRAM_CHUNK = 2048
_BLOCK_FLOATS = 1 << 26
# The λ search starts at SEARCH_START times the mean item degree (``start_l2``) and stops
# narrowing once its next probe would be within SEARCH_TOLERANCE decades of a value tried.
# Both decide only how many fits the search costs, not where it can end: the optimum was 2.9
# (ml-100k) and 4.5 (Amazon Toys) times the mean degree, and validation accuracy is flat
# within a factor of 2 around it.
SEARCH_START = 3.0
SEARCH_TOLERANCE = 0.1


@dataclass(frozen=True)
class EASEConfig:
    # None: chosen on validation, continuously on a log scale within [l2_min, l2_max] (see
    # ``EASE.search``); a number: used as it is.
    l2: float | None = None
    l2_min: float = 1.0
    l2_max: float = 1e5
    # Recency: a (user, item) pair weighs 0.5 ** (age / half-life) in X instead of 1, its age
    # taken from its newest event to the newest training event. None: every pair weighs 1.
    half_life_days: float | None = None


@dataclass(frozen=True)
class SearchTrial:
    l2: float
    valid: float
    seconds: float  # since the search started


# What `recsys tune` varies (recsys.models.space): λ on a continuous log scale. A trial
# fits this one l2 (the config's), never the grid above.
SEARCH_SPACE: SearchSpace = {"l2": FloatRange(1.0, 1e5, log=True)}


class EASE(Recommender):
    """Embarrassingly Shallow Autoencoder: scores = X · B with an item-item matrix B.

    (Here B is the paper's weight matrix; in shape comments B is still the batch.)

    Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019. With X the binary
    user-item matrix of the training events and λ = ``config.l2``,
    ``P = (XᵀX + λI)⁻¹`` and ``B = I - P · diag(1 / diag(P))``, so ``diag(B) = 0``.

    B is stored with a zero padding row, ``(I + 1, I)``. An item that appears twice in a
    history counts once, as in the training matrix X. The exported graph builds the binary row
    of the history (a scatter into ``(B, I + 1)`` zeros) and multiplies it by B: memory stays
    (B, I) for any history length, where gathering B's rows for every position would hold
    (B, L, I) (9.8 GB for an evaluation batch of 1024 x 200 at 12k items). In eager mode the
    same sum is an ``embedding_bag`` over the de-duplicated history, which reads only the
    history's rows: 40x faster than the (B, I) x (I, I) product at 12k items, which matters
    when every λ of the grid is evaluated. The export parity test checks both agree.

    Deviations from the paper: none in the model. Computation is float32 (the paper's code
    uses float64); XᵀX is cached per training set (see ``fit``). The paper tunes λ per
    dataset by hand; here ``search`` chooses it on validation, on a continuous log scale.
    """

    input_kinds: ClassVar[tuple[InputKind, ...]] = ("history",)
    batch_kind: ClassVar[BatchKind] = "fit"

    def __init__(
        self,
        config: EASEConfig,
        num_users: int,
        num_items: int,
        side: SideInfo | None = None,
    ) -> None:
        super().__init__(num_users, num_items)
        self.config = config
        if config.l2 is not None:
            self.set_regularization(config.l2)
        if not 0 < config.l2_min < config.l2_max:
            raise ValueError(
                f"EASE needs 0 < l2_min < l2_max, got {config.l2_min}, {config.l2_max}"
            )
        if config.half_life_days is not None and not config.half_life_days > 0:
            raise ValueError(f"EASE needs half_life_days > 0, got {config.half_life_days}")
        self.weights: Tensor
        # Row 0 is the padding item and stays zero, so padded positions add nothing.
        self.register_buffer("weights", torch.zeros(num_items + 1, num_items))  # (I + 1, I)

    def set_regularization(self, l2: float) -> None:
        """Use ``l2`` from the next ``fit`` on (the config is replaced, so it is saved too)."""
        if l2 <= 0:
            raise ValueError(f"EASE needs l2 > 0 (XᵀX alone is singular), got {l2}")
        self.config = replace(self.config, l2=l2)

    def fit(self, train: TrainSet) -> None:
        """Solve for B with ``config.l2`` (without one, the search's starting value).

        XᵀX is reused while the same ``train`` object lives, so fitting several λ pays for
        the Gram matrix once. XᵀX + λI is symmetric positive definite: P is the inverse from
        its Cholesky factor (LAPACK's potri: about n³ flops with the factorisation). At
        12,000 items on 2 cores that took 16 s where two triangular solves against I took
        30 s and an LU inverse 32 s (benchmarks/results/ease-linalg.md).
        """
        started = time.perf_counter()
        with torch.no_grad():
            system = _GRAM_CACHE.get(
                train, self.num_users, self.num_items, self._half_life_ms()
            ).clone()  # (I, I)
            l2 = self.config.l2 if self.config.l2 is not None else start_l2(system)
            self.set_regularization(l2)
            system.diagonal().add_(l2)
            factor = torch.linalg.cholesky(system)  # (I, I) lower
            del system
            precision = torch.cholesky_inverse(factor)  # (I, I)  P, symmetric
            del factor
            self._set_weights(precision)
        logger.info(
            "EASE fit: %d items, l2=%g, %.1fs", self.num_items, l2, time.perf_counter() - started
        )

    def search(self, train: TrainSet, validate: Callable[[], float]) -> list[SearchTrial]:
        """Choose λ on validation and keep its fit; the trials in the order they ran.

        Each λ tried is an exact fit, scored by ``validate`` (the caller's validation metric
        of this model as it stands). ``log_search`` walks half-decade steps on log λ from
        ``start_l2`` within [l2_min, l2_max] until the best λ has a worse neighbour on each
        side (the choice then lies strictly inside the range searched, unless it sits at a
        bound), then narrows that bracket by parabolic interpolation (``SEARCH_TOLERANCE``).

        Why one factorisation per λ and not one eigendecomposition for every λ: the
        eigendecomposition (XᵀX = V diag(s) Vᵀ, then P(λ) = V diag(1/(s+λ)) Vᵀ) was tried and
        measured on 2 cores: at 11,924 items it took about 10 minutes before the first λ
        could be scored, where one fit (Cholesky and inverse) takes about 16 s, because
        reducing a dense matrix to tridiagonal form is bound by memory bandwidth; and every λ
        would still need an (I, I) product to form P. The 4 to 6 fits of a search cost a
        fraction of the decomposition alone.
        """
        started = time.perf_counter()
        trials: list[SearchTrial] = []
        best: tuple[float, Tensor] | None = None

        def measure(l2: float) -> float:
            nonlocal best
            self.set_regularization(l2)
            self.fit(train)
            valid = validate()
            trials.append(SearchTrial(l2, valid, time.perf_counter() - started))
            logger.info("EASE l2 %g: valid %.4f", l2, valid)
            if best is None or valid > best[0]:
                best = (valid, self.weights.clone())
            return valid

        with torch.no_grad():
            start = SEARCH_START * start_l2(
                _GRAM_CACHE.get(train, self.num_users, self.num_items, self._half_life_ms())
            )
            chosen = log_search(
                measure, start, self.config.l2_min, self.config.l2_max, tolerance=SEARCH_TOLERANCE
            )
            assert best is not None
            self.set_regularization(chosen)
            self.weights.copy_(best[1])
        logger.info(
            "EASE search: %d items, l2=%g of %d tried, %.1fs",
            self.num_items,
            chosen,
            len(trials),
            time.perf_counter() - started,
        )
        return trials

    def _half_life_ms(self) -> float | None:
        days = self.config.half_life_days
        return None if days is None else days * 86_400_000.0

    def _set_weights(self, precision: Tensor) -> None:
        """B = I - P diag(1 / diag(P)) from P (overwritten): B[i, j] = -P[i, j] / P[j, j]."""
        diagonal = precision.diagonal().clone()  # (I,)
        precision.div_(-diagonal)
        precision.diagonal().zero_()
        self.weights[0].zero_()
        self.weights[1:].copy_(precision)

    def score(self, query: Query) -> Tensor:
        assert query.history is not None, "EASE scores histories"
        history = query.history  # (B, L)
        if torch.onnx.is_in_onnx_export():
            # Exported: a binary row (B, I + 1) times B. Memory (B, I), whatever L is.
            rows = torch.zeros(
                (history.shape[0], self.num_items + 1), dtype=torch.float32, device=history.device
            )  # (B, I + 1)
            rows = rows.scatter(1, history, torch.ones_like(history, dtype=torch.float32))
            return rows @ self.weights  # (B, I)
        # Eager (evaluation): the same sum as a bag of B's rows, reading only the history's
        # rows, after repeats become padding so that each item counts once.
        return F.embedding_bag(_unique_rows(history), self.weights, mode="sum", padding_idx=0)

    def item_vectors(self) -> Tensor:
        # Row i of the item-item weights says how item i raises every other item: (I, I).
        return self.weights[1:].detach()


def _unique_rows(history: Tensor) -> Tensor:
    """(B, L) item indices with every repeat within a row turned into padding (0)."""
    ordered = history.sort(dim=1).values  # (B, L)
    repeated = torch.zeros_like(ordered, dtype=torch.bool)
    repeated[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    return ordered.masked_fill(repeated, 0)  # (B, L)


def start_l2(gram_matrix: Tensor) -> float:
    """The mean of diag(XᵀX): the number of users of the mean item, the scale of λ.

    λ is added to that diagonal, so its useful range moves with the data (the search starts
    at a multiple of it, ``SEARCH_START``).
    """
    return max(1.0, float(gram_matrix.diagonal().mean()))


def log_search(
    measure: Callable[[float], float],
    start: float,
    low: float,
    high: float,
    *,
    step: float = 0.5,
    tolerance: float = 0.1,
) -> float:
    """The λ in [low, high] that maximises ``measure``, searched on log10 λ.

    From ``start`` it steps ``step`` decades at a time towards the better side until the best
    value has a worse neighbour on each side (or reaches a bound), then narrows that bracket
    by parabolic interpolation until the next probe would fall within ``tolerance`` decades
    of a value already measured. Each λ is measured once. Assumes ``measure``
    is unimodal in log λ, which validation accuracy is in practice (it falls on both sides
    of the optimum: under-regularised, then over-regularised).
    """
    lo, hi = math.log10(low), math.log10(high)
    seen: dict[float, float] = {}

    def f(x: float) -> float:
        x = min(max(x, lo), hi)
        if x not in seen:
            seen[x] = measure(10.0**x)
        return seen[x]

    middle = min(max(math.log10(start), lo), hi)
    left, right = max(lo, middle - step), min(hi, middle + step)
    while True:  # walk until f(left) <= f(middle) >= f(right) or a bound is reached
        if f(left) > f(middle) and left > lo:
            middle, right, left = left, middle, max(lo, left - step)
        elif f(right) > f(middle) and right < hi:
            left, middle, right = middle, right, min(hi, right + step)
        else:
            break
    best = max((x for x in seen if left <= x <= right), key=lambda x: seen[x])
    # Narrow by successive parabolic interpolation: probe the vertex of the parabola through
    # the best point and its measured neighbours, while it lies inside the bracket and at
    # least ``tolerance`` decades from every value already measured. Validation accuracy is
    # close to a parabola in log λ near its peak, so this usually costs one or two fits
    # where golden sections to the same width cost three or four.
    while left < best < right and left in seen and right in seen:
        vertex = _parabola_vertex((left, f(left)), (best, f(best)), (right, f(right)))
        if vertex is None or not left < vertex < right:
            break
        if min(abs(vertex - x) for x in seen) < tolerance:
            break
        if f(vertex) > f(best):
            left, right = (left, best) if vertex < best else (best, right)
            best = vertex
        else:
            left, right = (vertex, right) if vertex < best else (left, vertex)
    return float(10.0**best)


def _parabola_vertex(*points: tuple[float, float]) -> float | None:
    """The x of the extremum of the parabola through three (x, y) points; None if collinear."""
    (a, fa), (b, fb), (c, fc) = points
    numerator = (b - a) ** 2 * (fb - fc) - (b - c) ** 2 * (fb - fa)
    denominator = (b - a) * (fb - fc) - (b - c) * (fb - fa)
    if denominator == 0:
        return None
    return b - 0.5 * numerator / denominator


def gram(
    train: TrainSet, num_users: int, num_items: int, half_life_ms: float | None = None
) -> Tensor:
    """XᵀX (I, I) float32 of the user-item matrix X of the training events.

    X is binary, or with ``half_life_ms`` each pair's entry is 0.5 ** (age / half-life), the
    age of its newest event before the newest training event (recent taste weighs more).
    Xᵀ is kept sparse and multiplied by dense column blocks of X, so memory stays at the
    (I, I) result plus one (U, chunk) block whatever the number of events.
    """
    users = train.user_idx.astype(np.int64)
    items = train.item_idx.astype(np.int64) - 1  # column j is item index j + 1
    keys = users * num_items + items
    pairs = np.unique(keys)  # repeated events count once
    values = np.ones(len(pairs), dtype=np.float32)
    if half_life_ms is not None and len(keys):
        times = train.occurred_at.astype(np.float64)
        newest = np.full(len(pairs), -np.inf)
        np.maximum.at(newest, np.searchsorted(pairs, keys), times)
        values = np.exp2(-(times.max() - newest) / half_life_ms).astype(np.float32)
    users, items = pairs // num_items, pairs % num_items  # sorted by user, then item
    rows = num_users + 1
    transposed = torch.sparse_coo_tensor(
        torch.from_numpy(np.stack([items, users])),
        torch.from_numpy(values),
        (num_items, rows),
        check_invariants=False,
    ).coalesce()  # (I, U)
    by_item = np.argsort(items, kind="stable")
    items, users, values = items[by_item], users[by_item], values[by_item]
    chunk = max(64, min(_GRAM_CHUNK, _BLOCK_FLOATS // rows))
    starts = np.arange(0, num_items, chunk)
    bounds = np.searchsorted(items, np.append(starts, num_items))
    out = torch.empty((num_items, num_items), dtype=torch.float32)
    for k, start in enumerate(starts.tolist()):
        stop = min(start + chunk, num_items)
        block = torch.zeros((rows, stop - start), dtype=torch.float32)  # (U, chunk)
        first, last = bounds[k], bounds[k + 1]
        block[torch.from_numpy(users[first:last]), torch.from_numpy(items[first:last] - start)] = (
            torch.from_numpy(values[first:last])
        )
        out[:, start:stop] = torch.sparse.mm(transposed, block)
    return out


class _GramCache:
    """Holds XᵀX of the most recent training set until that set is garbage collected.

    Keyed by the identity of the ``TrainSet`` object (it holds numpy arrays, so it has no
    usable hash), which is what repeated fits over a λ grid share.
    """

    def __init__(self) -> None:
        self._source: weakref.ref[TrainSet] | None = None
        self._key: tuple[int, int, float | None] = (0, 0, None)
        self._gram: Tensor | None = None

    def get(
        self, train: TrainSet, num_users: int, num_items: int, half_life_ms: float | None = None
    ) -> Tensor:
        source = self._source() if self._source is not None else None
        key = (num_users, num_items, half_life_ms)
        if source is train and self._key == key and self._gram is not None:
            return self._gram
        self.clear()
        result = gram(train, num_users, num_items, half_life_ms)
        self._source = weakref.ref(train, self._forget)
        self._key = key
        self._gram = result
        return result

    def clear(self) -> None:
        self._source, self._gram = None, None

    def _forget(self, source: weakref.ref[TrainSet]) -> None:
        if self._source is source:
            self.clear()


_GRAM_CACHE = _GramCache()
