"""Ranking metrics on numpy arrays, from the 0-based ranks of target items (rank 0 = top).

Per-user functions return one value per user; bootstrap helpers turn them into intervals.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# Resamples drawn per chunk: bounds memory at chunk * num_users int64 (fixed, so that results
# depend only on the seed, never on how many metrics are resampled together).
_BOOTSTRAP_CHUNK = 64


def _ranks(ranks: npt.ArrayLike) -> IntArray:
    out = np.asarray(ranks, dtype=np.int64)
    if out.size and out.min() < 0:
        raise ValueError("ranks are 0-based and cannot be negative")
    return out


def _check_k(k: int) -> None:
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")


def ndcg_at_k(ranks: npt.ArrayLike, k: int) -> FloatArray:
    """NDCG@K with one relevant item per user: ``1 / log2(rank + 2)`` if ``rank < k``, else 0.

    With a single target the ideal DCG is 1, so NDCG equals DCG.
    """
    _check_k(k)
    r = _ranks(ranks)
    # Clip before the log so that a huge "never ranked" sentinel cannot overflow.
    return np.where(r < k, 1.0 / np.log2(np.minimum(r, k) + 2.0), 0.0)


def hr_at_k(ranks: npt.ArrayLike, k: int) -> FloatArray:
    """Hit rate@K with one relevant item per user: 1 if ``rank < k``, else 0."""
    _check_k(k)
    return (_ranks(ranks) < k).astype(np.float64)


def mrr_at_k(ranks: npt.ArrayLike, k: int) -> FloatArray:
    """Reciprocal rank@K with one relevant item per user: ``1 / (rank + 1)`` if ``rank < k``."""
    _check_k(k)
    r = _ranks(ranks)
    return np.where(r < k, 1.0 / (np.minimum(r, k) + 1.0), 0.0)


def _segments(ranks: npt.ArrayLike, offsets: npt.ArrayLike) -> tuple[IntArray, IntArray, IntArray]:
    """Flat ranks, the user of each rank, and each user's number of targets (all >= 1)."""
    r = _ranks(ranks)
    off = np.asarray(offsets, dtype=np.int64)
    if off.ndim != 1 or len(off) == 0 or off[0] != 0 or off[-1] != len(r):
        raise ValueError("offsets must run from 0 to len(ranks) (CSR row offsets, (U + 1,))")
    counts = np.diff(off)
    if (counts <= 0).any():
        raise ValueError("every user needs at least one target")
    return r, np.repeat(np.arange(len(counts)), counts), counts


def recall_at_k(ranks: npt.ArrayLike, offsets: npt.ArrayLike, k: int) -> FloatArray:
    """Recall@K with several targets per user: ``|{t in T: rank_t < k}| / min(k, |T|)``.

    ``ranks`` holds the ranks of every user's targets in one ranked list (so a user's ranks
    are distinct) and ``offsets`` (U + 1,) says where each user's targets start, CSR style.
    Dividing by ``min(k, |T|)`` instead of ``|T|`` lets a perfect list score 1 even when a
    user has more targets than slots (Liang et al., "Variational Autoencoders for
    Collaborative Filtering", WWW 2018).
    """
    _check_k(k)
    r, user, counts = _segments(ranks, offsets)
    hits = np.bincount(user, weights=(r < k).astype(np.float64), minlength=len(counts))
    return hits / np.minimum(counts, k)


def ndcg_at_k_multi(ranks: npt.ArrayLike, offsets: npt.ArrayLike, k: int) -> FloatArray:
    """NDCG@K with several relevant items per user and binary relevance: DCG / IDCG.

    ``DCG = sum over targets with rank < k of 1 / log2(rank + 2)``;
    ``IDCG = sum_{i=0}^{min(k, |T|) - 1} 1 / log2(i + 2)``, the DCG of a list that puts the
    targets first. ``ranks``/``offsets`` as in :func:`recall_at_k`.
    """
    _check_k(k)
    r, user, counts = _segments(ranks, offsets)
    gain = np.where(r < k, 1.0 / np.log2(np.minimum(r, k) + 2.0), 0.0)
    dcg = np.bincount(user, weights=gain, minlength=len(counts))
    # ideal[n] = DCG of n targets at ranks 0..n-1.
    ideal: FloatArray = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))])
    return dcg / ideal[np.minimum(counts, k)]


def coverage_at_k(topk_items: npt.ArrayLike, num_items: int) -> float:
    """Catalogue coverage: distinct items in any user's top-K list / ``num_items``.

    ``topk_items`` is (U, K) of item indices ``1..num_items``; 0 marks an empty slot (a user
    with fewer than K candidate items) and is not an item.
    """
    if num_items <= 0:
        raise ValueError(f"num_items must be positive, got {num_items}")
    items = np.asarray(topk_items, dtype=np.int64).ravel()
    items = items[items > 0]
    if items.size and items.max() > num_items:
        raise ValueError(f"item index {int(items.max())} exceeds num_items={num_items}")
    return len(np.unique(items)) / num_items


def bootstrap_means(
    per_user: npt.ArrayLike, num_resamples: int = 1000, seed: int = 0
) -> FloatArray:
    """Means of ``num_resamples`` resamples of users drawn with replacement.

    ``per_user`` is (U,) or (M, U) for M metrics of the same users; every metric is resampled
    with the same draws, so the result is (R,) or (M, R). The draws depend only on ``seed``,
    U and R: the same seed gives the same resamples whatever is being measured.
    """
    values = np.asarray(per_user, dtype=np.float64)
    if values.ndim not in (1, 2):
        raise ValueError("per_user must be (U,) or (M, U)")
    if num_resamples <= 0:
        raise ValueError(f"num_resamples must be positive, got {num_resamples}")
    matrix = np.atleast_2d(values)  # (M, U)
    num_users = matrix.shape[1]
    out = np.full((matrix.shape[0], num_resamples), np.nan)
    if num_users == 0:
        return out[0] if values.ndim == 1 else out
    rng = np.random.default_rng(seed)
    for start in range(0, num_resamples, _BOOTSTRAP_CHUNK):
        size = min(_BOOTSTRAP_CHUNK, num_resamples - start)
        draws = rng.integers(0, num_users, size=(size, num_users))
        # How often each user was drawn in each resample: (size, U) weights.
        shifted = draws + np.arange(size)[:, None] * num_users
        counts = np.bincount(shifted.ravel(), minlength=size * num_users).astype(np.float64)
        # einsum, not matmul: a threaded BLAS call this small stalls on a busy machine.
        sums = np.einsum("mu,su->ms", matrix, counts.reshape(size, num_users))
        out[:, start : start + size] = sums / num_users
    return out[0] if values.ndim == 1 else out


def bootstrap_ci(
    per_user: npt.ArrayLike, num_resamples: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap ``(1 - alpha)`` interval of the mean over users.

    The bounds are the ``alpha / 2`` and ``1 - alpha / 2`` quantiles of the means of
    ``num_resamples`` resamples of users; (nan, nan) when there are no users.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    values = np.asarray(per_user, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError("per_user must be one value per user, (U,)")
    if values.size == 0:
        return float("nan"), float("nan")
    means = bootstrap_means(values, num_resamples, seed)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


class PairedBootstrap(TypedDict):
    """Result of :func:`paired_bootstrap`; ``diff`` and its interval are ``mean(b - a)``."""

    num_users: int
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    wins: int
    losses: int
    ties: int


def paired_bootstrap(
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    num_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> PairedBootstrap:
    """Paired bootstrap of two models' per-user values on the same users, in the same order.

    ``diff = mean(b - a)`` (positive: ``b`` is better on a higher-is-better metric), with a
    percentile ``(1 - alpha)`` interval from resampling users. Two-sided p-value:
    ``min(1, 2 * share of resampled mean differences on the other side of 0)`` (0 included),
    1 when ``diff == 0``; its resolution is ``2 / num_resamples``, so 0.0 means "below it".
    ``wins``/``losses``/``ties`` count users where ``b > a`` / ``b < a`` / ``b == a``.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    va = np.asarray(a, dtype=np.float64)
    vb = np.asarray(b, dtype=np.float64)
    if va.ndim != 1 or va.shape != vb.shape:
        raise ValueError(
            f"a and b must be per-user values of equal length, got {va.shape}/{vb.shape}"
        )
    if va.size == 0:
        raise ValueError("paired bootstrap needs at least one user")
    delta = vb - va
    diff = float(delta.mean())
    means = bootstrap_means(delta, num_resamples, seed)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    if diff > 0:
        p_value = min(1.0, 2.0 * float(np.mean(means <= 0.0)))
    elif diff < 0:
        p_value = min(1.0, 2.0 * float(np.mean(means >= 0.0)))
    else:
        p_value = 1.0
    return PairedBootstrap(
        num_users=int(va.size),
        mean_a=float(va.mean()),
        mean_b=float(vb.mean()),
        diff=diff,
        ci_low=float(low),
        ci_high=float(high),
        p_value=p_value,
        wins=int(np.count_nonzero(delta > 0)),
        losses=int(np.count_nonzero(delta < 0)),
        ties=int(np.count_nonzero(delta == 0)),
    )
