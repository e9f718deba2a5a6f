"""Full-ranking evaluation of a scoring callable on an eval set, with bootstrap intervals.

Imports no torch: anything that maps (histories, users) to a score matrix can be evaluated.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from recsys.data.splits import PROTOCOLS, EvalSet, Protocol, eval_query_arrays
from recsys.errors import RecsysError
from recsys.metrics import (
    PairedBootstrap,
    bootstrap_means,
    coverage_at_k,
    hr_at_k,
    mrr_at_k,
    ndcg_at_k,
    ndcg_at_k_multi,
    paired_bootstrap,
    recall_at_k,
)

FloatArray = npt.NDArray[np.float64]
Int32Array = npt.NDArray[np.int32]
Int64Array = npt.NDArray[np.int64]

# (history (B, L) int64 left-padded item indices, users (B,) int64) -> scores (B, I), column j
# scoring item index j + 1. recsys.models.base.torch_scorer builds one from a model (scoring on
# the model's device, CPU or GPU, a chunk of users at a time).
Scorer = Callable[[Int64Array, Int64Array], npt.ArrayLike]

# Rank given to a target that can never be hit (scored -inf, e.g. because it is in the history).
NEVER = np.iinfo(np.int64).max // 2
# Scores held at once: a batch has at most this many (user, item) cells (256 MB of float32),
# so at 1M items it scores 64 users at a time instead of 1,024 (which needed 15 GB at peak).
BLOCK_CELLS = 1 << 26


@dataclass(frozen=True)
class EvalResult:
    """Per-user metrics of one evaluation, plus catalogue coverage.

    ``per_user[key]`` is aligned with ``users`` (eval-set order). ``eval_digest`` fingerprints
    the eval set (users, histories, targets) so that only like is compared with like.
    ``topk`` (U, max(ks)) holds each user's recommended item indices, best first, 0 for an
    empty slot, when ``evaluate(keep_topk=True)``.
    """

    protocol: Protocol
    users: Int32Array
    per_user: dict[str, FloatArray]
    coverage: dict[str, float]
    num_items: int
    ks: tuple[int, ...]
    eval_digest: str
    topk: Int32Array | None = None

    @property
    def num_users(self) -> int:
        return len(self.users)

    @property
    def metrics(self) -> tuple[str, ...]:
        """Every metric key, per-user ones first."""
        return (*self.per_user, *self.coverage)

    def mean(self, metric: str) -> float:
        """Mean over users of a per-user metric, or the value of a coverage metric."""
        if metric in self.per_user:
            values = self.per_user[metric]
            return float(values.mean()) if len(values) else float("nan")
        if metric in self.coverage:
            return self.coverage[metric]
        raise RecsysError(
            f"no metric {metric!r} in this {self.protocol} evaluation: "
            f"use one of {', '.join(self.metrics)}"
        )

    def summary(self, num_resamples: int = 1000, seed: int = 0) -> dict[str, dict[str, float]]:
        """``{metric: {"value", "ci_low", "ci_high"}}``: mean and percentile-bootstrap 95% CI.

        All per-user metrics are resampled with the same draws of users. Coverage is a
        property of the whole set of lists, not a mean over users, so it gets no interval:
        its ``ci_low`` and ``ci_high`` equal its value.
        """
        out: dict[str, dict[str, float]] = {}
        names = list(self.per_user)
        if names and self.num_users:
            stacked = np.stack([self.per_user[name] for name in names])  # (M, U)
            means = bootstrap_means(stacked, num_resamples, seed)  # (M, R)
            bounds = np.quantile(means, [0.025, 0.975], axis=1)  # (2, M)
            for m, name in enumerate(names):
                out[name] = {
                    "value": self.mean(name),
                    "ci_low": float(bounds[0, m]),
                    "ci_high": float(bounds[1, m]),
                }
        else:
            nan = float("nan")
            out.update({name: {"value": nan, "ci_low": nan, "ci_high": nan} for name in names})
        for name, value in self.coverage.items():
            out[name] = {"value": value, "ci_low": value, "ci_high": value}
        return out

    def to_dict(
        self, *, num_resamples: int = 1000, seed: int = 0, per_user: bool = False
    ) -> dict[str, Any]:
        """JSON-ready: protocol, sizes, ``metrics`` = :meth:`summary`; per-user values if asked.

        With ``per_user=True`` the dict holds everything :meth:`from_dict` needs to rebuild
        the result (``topk`` is not kept), so runs can be compared later with :func:`compare`.
        """
        out: dict[str, Any] = {
            "protocol": self.protocol,
            "num_users": self.num_users,
            "num_items": self.num_items,
            "ks": list(self.ks),
            "eval_digest": self.eval_digest,
            "metrics": self.summary(num_resamples, seed),
        }
        if per_user:
            out["users"] = self.users.tolist()
            out["per_user"] = {name: values.tolist() for name, values in self.per_user.items()}
            out["coverage"] = dict(self.coverage)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResult:
        """Rebuild a result written by ``to_dict(per_user=True)``."""
        if "per_user" not in data:
            raise RecsysError("this evaluation was saved without per-user values")
        protocol = data["protocol"]
        if protocol not in PROTOCOLS:
            raise RecsysError(f"unknown protocol {protocol!r}")
        return cls(
            protocol=protocol,
            users=np.asarray(data["users"], dtype=np.int32),
            per_user={k: np.asarray(v, dtype=np.float64) for k, v in data["per_user"].items()},
            coverage={k: float(v) for k, v in data["coverage"].items()},
            num_items=int(data["num_items"]),
            ks=tuple(int(k) for k in data["ks"]),
            eval_digest=str(data["eval_digest"]),
        )


def evaluate(
    score_fn: Scorer,
    eval_set: EvalSet,
    *,
    num_items: int,
    protocol: Protocol,
    ks: Sequence[int] = (10, 20),
    max_len: int = 200,
    batch_size: int = 1024,
    keep_topk: bool = False,
) -> EvalResult:
    """Rank every item for every user of ``eval_set`` and measure where the targets land.

    ``score_fn`` sees the last ``max_len`` history items; every item of the user's FULL
    history is then removed from the ranking (score set to -inf). A target that is in the
    history, or that the scorer gives -inf, can never be hit and counts as a miss (it still
    counts in Recall's and IDCG's ``|T|``). Ties are broken pessimistically: every
    non-target item scoring the same as a target ranks ahead of it, so a constant scorer
    gets ~0 (never a lucky hit), unless there are fewer candidates than k.

    Metrics (ks = (10, 20) by default; MRR and coverage at the smallest k):
    ``loo``: ndcg@k, hr@k, mrr@k, coverage@k; one target per user.
    ``temporal``: recall@k, ndcg@k (binary relevance, all targets relevant), coverage@k;
    targets are sets (duplicates count once), placed in one ranked list where targets tied
    with each other follow item-index order (this only decides which of them takes a slot).

    Work is done ``batch_size`` users at a time, fewer when the catalogue is large (at most
    ``BLOCK_CELLS`` scores per batch), so memory is bounded by a (batch, I) matrix.
    """
    if protocol not in PROTOCOLS:
        raise RecsysError(f"unknown protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}")
    ks = tuple(sorted(set(ks)))
    if not ks or ks[0] <= 0:
        raise RecsysError(f"ks must be positive cut-offs, got {ks}")
    if num_items <= 0 or batch_size <= 0 or max_len <= 0:
        raise RecsysError("num_items, batch_size and max_len must be positive")
    target_counts = eval_set.targets.lengths()
    if protocol == "loo" and (target_counts != 1).any():
        raise RecsysError("the loo protocol needs exactly one target per user")
    if (target_counts == 0).any():
        raise RecsysError("every evaluated user needs at least one target")

    k_min, k_max = ks[0], ks[-1]
    list_len = min(k_max if keep_topk else k_min, num_items)
    ranks: list[Int64Array] = []
    batch_counts: list[Int64Array] = []
    lists: list[Int32Array] = []
    batch_size = max(1, min(batch_size, BLOCK_CELLS // num_items))
    for start in range(0, len(eval_set), batch_size):
        stop = min(start + batch_size, len(eval_set))
        scores = _batch_scores(score_fn, eval_set, start, stop, num_items, max_len)
        _exclude_history(scores, eval_set, start, stop)
        t_row, t_col, counts = _batch_targets(
            eval_set, start, stop, num_items, dedupe=protocol == "temporal"
        )
        t_score = scores[t_row, t_col]
        lists.append(_top_items(scores, list_len))
        if protocol == "loo":
            batch_ranks = _single_target_ranks(scores, t_score)
        else:
            batch_ranks = _multi_target_ranks(scores, t_row, t_col, t_score, counts, k_max)
        ranks.append(batch_ranks)
        batch_counts.append(counts)

    all_ranks = np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)
    counts_all = np.concatenate(batch_counts) if batch_counts else np.zeros(0, dtype=np.int64)
    csr = np.concatenate([[0], np.cumsum(counts_all)]).astype(np.int64)
    per_user: dict[str, FloatArray] = {}
    if protocol == "loo":
        per_user.update({f"ndcg@{k}": ndcg_at_k(all_ranks, k) for k in ks})
        per_user.update({f"hr@{k}": hr_at_k(all_ranks, k) for k in ks})
        per_user[f"mrr@{k_min}"] = mrr_at_k(all_ranks, k_min)
    else:
        per_user.update({f"recall@{k}": recall_at_k(all_ranks, csr, k) for k in ks})
        per_user.update({f"ndcg@{k}": ndcg_at_k_multi(all_ranks, csr, k) for k in ks})
    top = np.concatenate(lists) if lists else np.zeros((0, list_len), dtype=np.int32)
    return EvalResult(
        protocol=protocol,
        users=eval_set.users.astype(np.int32),
        per_user=per_user,
        coverage={f"coverage@{k_min}": coverage_at_k(top[:, :k_min], num_items)},
        num_items=num_items,
        ks=ks,
        eval_digest=eval_digest(eval_set),
        topk=top if keep_topk else None,
    )


def _batch_scores(
    score_fn: Scorer, eval_set: EvalSet, start: int, stop: int, num_items: int, max_len: int
) -> npt.NDArray[np.floating[Any]]:
    """A writable copy of the scores of users ``start:stop``, (B, I), float32 or float64."""
    history, users = eval_query_arrays(eval_set, np.arange(start, stop, dtype=np.int64), max_len)
    raw = np.asarray(score_fn(history, users))
    if raw.shape != (stop - start, num_items):
        raise RecsysError(
            f"the scorer returned shape {raw.shape}, expected {(stop - start, num_items)}"
        )
    # Keep float32 as is (a cast to a coarser type would invent ties); copy: we write to it.
    dtype = raw.dtype if raw.dtype in (np.float32, np.float64) else np.float64
    scores: npt.NDArray[np.floating[Any]] = np.array(raw, dtype=dtype, copy=True)
    if np.isnan(scores).any():
        raise RecsysError("the scorer returned NaN scores")
    return scores


def _exclude_history(
    scores: npt.NDArray[np.floating[Any]], eval_set: EvalSet, start: int, stop: int
) -> None:
    """Set the score of every item in each user's full history to -inf, in place."""
    offsets = eval_set.history.offsets
    items = eval_set.history.values[offsets[start] : offsets[stop]]
    rows = np.repeat(np.arange(stop - start), np.diff(offsets[start : stop + 1]))
    scores[rows, items.astype(np.int64) - 1] = -np.inf


def _batch_targets(
    eval_set: EvalSet, start: int, stop: int, num_items: int, *, dedupe: bool
) -> tuple[Int64Array, Int64Array, Int64Array]:
    """Row, column (item index - 1) of each target of users ``start:stop``; targets per row."""
    offsets = eval_set.targets.offsets
    items = eval_set.targets.values[offsets[start] : offsets[stop]].astype(np.int64)
    rows = np.repeat(np.arange(stop - start), np.diff(offsets[start : stop + 1]))
    if dedupe:
        # Distinct targets per row, sorted by (row, item).
        keys = np.unique(rows * (num_items + 1) + items)
        rows, items = keys // (num_items + 1), keys % (num_items + 1)
    if items.size and (items.min() < 1 or items.max() > num_items):
        raise RecsysError(f"target item indices must be in 1..{num_items}")
    return rows, items - 1, np.bincount(rows, minlength=stop - start).astype(np.int64)


def _top_items(scores: npt.NDArray[np.floating[Any]], length: int) -> Int32Array:
    """Each row's ``length`` best item indices (1-based), best first; 0 where scored -inf.

    Ties at the cut are broken arbitrarily (this only feeds coverage and ``topk``). Where
    torch is already loaded (training, tuning), its ``topk`` does it over the same buffer:
    at 12k items it took a ninth of the time of numpy's ``argpartition`` and a sort of the
    slice, which was the largest cost of an EASE validation. This module never imports
    torch itself: ONNX evaluation runs without it.
    """
    torch = sys.modules.get("torch")
    num_items = scores.shape[1]
    if torch is not None:
        best, top = torch.topk(torch.from_numpy(scores), length, dim=1)  # (B, K), best first
        values, items = best.numpy(), top.numpy() + 1
    else:
        if length < num_items:
            part = np.argpartition(scores, num_items - length, axis=1)[:, num_items - length :]
        else:
            part = np.broadcast_to(np.arange(num_items), scores.shape).copy()
        values = np.take_along_axis(scores, part, axis=1)  # (B, K)
        order = np.argsort(-values, axis=1, kind="stable")
        items = np.take_along_axis(part, order, axis=1) + 1
        values = np.take_along_axis(values, order, axis=1)
    items[values == -np.inf] = 0
    out: Int32Array = items.astype(np.int32)
    return out


def _single_target_ranks(
    scores: npt.NDArray[np.floating[Any]], t_score: npt.NDArray[np.floating[Any]]
) -> Int64Array:
    """Rank = number of OTHER items scoring at least the target's score (pessimistic ties)."""
    ahead = np.count_nonzero(scores >= t_score[:, None], axis=1) - 1  # (B,)
    return np.where(t_score == -np.inf, NEVER, ahead).astype(np.int64)


def _multi_target_ranks(
    scores: npt.NDArray[np.floating[Any]],
    t_row: Int64Array,
    t_col: Int64Array,
    t_score: npt.NDArray[np.floating[Any]],
    counts: Int64Array,
    k_max: int,
) -> Int64Array:
    """Positions of each row's targets in one pessimistic ranked list; exact below ``k_max``.

    The list orders items by score, non-targets before targets on ties, tied targets in
    input order. A target's rank is N + p: N non-targets score at least as much, p of the
    row's targets come before it. N matters only when below ``k_max``, so it is counted
    among each row's ``k_max`` best non-target scores: if the target beats the smallest of
    them, every non-target ahead of it is in that block; otherwise N >= k_max already.
    Modifies ``scores`` (targets set to -inf).
    """
    num_items = scores.shape[1]
    scores[t_row, t_col] = -np.inf  # (B, I) now scores non-targets only
    if k_max < num_items:
        block = np.partition(scores, num_items - k_max, axis=1)[:, num_items - k_max :]
        exact = t_score > block.min(axis=1)[t_row]
    else:
        block = scores
        exact = np.ones(len(t_score), dtype=bool)
    ahead = np.full(len(t_score), k_max, dtype=np.int64)
    ahead[exact] = np.count_nonzero(block[t_row[exact]] >= t_score[exact, None], axis=1)
    # p: place among the row's targets sorted by descending score (stable: input order).
    order = np.lexsort((-t_score, t_row))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    place = np.empty(len(t_score), dtype=np.int64)
    place[order] = np.arange(len(order)) - starts[t_row[order]]
    return np.where(t_score == -np.inf, NEVER, ahead + place)


def eval_digest(eval_set: EvalSet) -> str:
    """SHA-256 of an eval set's users, histories and targets (dtype-independent)."""
    digest = hashlib.sha256()
    for array in (
        eval_set.users.astype(np.int64),
        eval_set.history.offsets.astype(np.int64),
        eval_set.history.values.astype(np.int64),
        eval_set.targets.offsets.astype(np.int64),
        eval_set.targets.values.astype(np.int64),
    ):
        digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(b"|")
    return digest.hexdigest()


class Comparison(PairedBootstrap):
    """A paired bootstrap of ``b - a`` on one metric, with what was compared."""

    metric: str
    protocol: str


def compare(
    a: EvalResult,
    b: EvalResult,
    metric: str = "ndcg@10",
    *,
    num_resamples: int = 1000,
    seed: int = 0,
) -> Comparison:
    """Paired bootstrap of ``b`` against ``a`` on one per-user metric: ``diff = mean(b - a)``.

    Both results must come from the same protocol and the same eval set (same users in the
    same order, same histories and targets); numbers from different protocols are never
    compared. See :func:`recsys.metrics.paired_bootstrap` for the fields.
    """
    if a.protocol != b.protocol:
        raise RecsysError(
            f"numbers from different protocols are never compared ({a.protocol} vs {b.protocol})"
        )
    if not np.array_equal(a.users, b.users):
        raise RecsysError(
            f"the two evaluations cover different users ({a.num_users} vs {b.num_users} users "
            "or another order): evaluate both on the same eval set"
        )
    if a.eval_digest != b.eval_digest:
        raise RecsysError("the two evaluations used different eval sets (histories or targets)")
    if metric not in a.per_user or metric not in b.per_user:
        available = ", ".join(name for name in a.per_user if name in b.per_user)
        raise RecsysError(f"{metric!r} is not a per-user metric of both results: use {available}")
    result = paired_bootstrap(a.per_user[metric], b.per_user[metric], num_resamples, seed)
    return Comparison(**result, metric=metric, protocol=a.protocol)
