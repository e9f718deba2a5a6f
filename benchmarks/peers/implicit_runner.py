"""Peer runner for the ``implicit`` library (ALS, BPR) on an exported leave-last-out split.

Reads the split that benchmarks/peer_split.py wrote (``train.tsv``, ``valid.tsv``, ``test.tsv``),
tunes a small grid on the validation targets within a wall-clock budget, refits the best
configuration on train and writes every test user's top-K item ids to JSON, which
peer_split.evaluate_lists then scores with recsys' own evaluation. It runs in its own
virtualenv (``benchmarks/peers/implicit_env.txt``) and does not import ``recsys``:

    python3.11 -m venv benchmarks/.peers/venvs/implicit
    benchmarks/.peers/venvs/implicit/bin/pip install -r benchmarks/peers/implicit_env.txt
    benchmarks/.peers/venvs/implicit/bin/python benchmarks/peers/implicit_runner.py \\
        --split benchmarks/.peers/ml-100k --model als --budget-seconds 60 --k 20 --out als.json

Protocol:

- The user-item matrix is binary: every (user, item) pair in ``train.tsv`` is a 1, a pair seen
  several times still counts once. ALS weighs it by ``alpha`` (implicit's confidence: an observed
  pair weighs ``alpha``, an unobserved one 1); BPR only uses which entries are non-zero.
- Users and items are indexed over all three files, so valid and test ids are always known;
  items with no training event have no learnt factors and are never recommended.
- Tuning: the grid (``GRIDS``) is visited in an order shuffled by ``--seed``. One fit per grid
  point runs to the largest iteration count and is scored at each checkpoint in ``CHECKPOINTS``
  (so "iterations" is tuned like early stopping); each validation user's history is train only,
  train items are excluded, and the pick is the best NDCG@10 (then HR@10). A new grid point
  starts only while the time spent, its predicted time and the predicted final refit fit in
  ``--budget-seconds``; the first always runs. A started fit is never cut short.
- Final: the chosen configuration is refit on train only (same seed) and each test user gets the
  top K items, excluding the history train + that user's validation target.

CPU only (``implicit.cpu``), ``num_threads`` from ``PEER_THREADS`` (default 2), BLAS held to one
thread as implicit asks.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import random
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import implicit
import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from implicit.cpu.bpr import BayesianPersonalizedRanking
from implicit.cpu.matrix_factorization_base import MatrixFactorizationBase
from threadpoolctl import threadpool_limits

IntArray = npt.NDArray[np.int64]

# Grid per model; "iterations" is not a grid axis but the checkpoints of one fit.
GRIDS: dict[str, dict[str, list[float]]] = {
    "als": {"factors": [64, 128], "regularization": [0.01, 0.1], "alpha": [1.0, 10.0, 40.0]},
    "bpr": {"factors": [64, 128], "learning_rate": [0.01, 0.05], "regularization": [0.001, 0.01]},
}
CHECKPOINTS: dict[str, list[int]] = {"als": [15, 30], "bpr": [50, 100, 200]}
# Predicted cost of a fit ~ iterations * factors**power (ALS solves factors x factors systems).
COST_POWER = {"als": 2.0, "bpr": 1.0}
EVAL_K = 10
BATCH_USERS = 2048


@dataclass(frozen=True)
class Interactions:
    """One TSV file as index arrays into the shared user and item ids."""

    users: IntArray
    items: IntArray


@dataclass
class Data:
    user_ids: list[str]
    item_ids: list[str]
    train: Interactions
    valid: Interactions
    test: Interactions

    def matrix(self, *parts: Interactions) -> sp.csr_matrix:
        """Binary users x items CSR of the given parts (repeated pairs count once)."""
        rows = np.concatenate([p.users for p in parts])
        cols = np.concatenate([p.items for p in parts])
        shape = (len(self.user_ids), len(self.item_ids))
        m = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=shape)
        m.sum_duplicates()
        m.data[:] = 1.0
        return m


def load(folder: Path) -> Data:
    raw = {part: _read(folder / f"{part}.tsv") for part in ("train", "valid", "test")}
    user_index: dict[str, int] = {}
    item_index: dict[str, int] = {}
    parts: dict[str, Interactions] = {}
    for part, pairs in raw.items():
        users = [user_index.setdefault(u, len(user_index)) for u, _ in pairs]
        items = [item_index.setdefault(i, len(item_index)) for _, i in pairs]
        parts[part] = Interactions(np.array(users, dtype=np.int64), np.array(items, np.int64))
    return Data(list(user_index), list(item_index), parts["train"], parts["valid"], parts["test"])


def _read(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader)
        if header[:2] != ["user_id", "item_id"]:
            raise SystemExit(f"{path}: unexpected header {header}")
        return [(row[0], row[1]) for row in reader if row]


def make_model(
    name: str, params: dict[str, float], iterations: int, threads: int, seed: int
) -> MatrixFactorizationBase:
    if name == "als":
        return AlternatingLeastSquares(
            factors=int(params["factors"]),
            regularization=params["regularization"],
            alpha=params["alpha"],
            iterations=iterations,
            num_threads=threads,
            random_state=seed,
        )
    return BayesianPersonalizedRanking(
        factors=int(params["factors"]),
        learning_rate=params["learning_rate"],
        regularization=params["regularization"],
        iterations=iterations,
        num_threads=threads,
        random_state=seed,
    )


def top_k(
    model: MatrixFactorizationBase,
    users: IntArray,
    history: sp.csr_matrix,
    k: int,
    cold_items: IntArray,
) -> IntArray:
    """Top-k item indices per user (-1 pads a short row), history items and cold items excluded."""
    out = np.full((len(users), k), -1, dtype=np.int64)
    for start in range(0, len(users), BATCH_USERS):
        batch = users[start : start + BATCH_USERS]
        ids, scores = model.recommend(
            batch,
            history[batch],
            N=k,
            filter_already_liked_items=True,
            filter_items=cold_items if len(cold_items) else None,
        )
        ids = np.where(np.isfinite(scores), ids, -1)
        out[start : start + len(batch), : ids.shape[1]] = ids
    return out


def hit_metrics(ranked: IntArray, targets: IntArray) -> dict[str, float]:
    """HR@k and NDCG@k of one target per row (k = ranked.shape[1])."""
    hits = ranked == targets[:, None]
    found = hits.any(axis=1)
    rank = hits.argmax(axis=1)
    ndcg = np.where(found, 1.0 / np.log2(rank + 2.0), 0.0)
    return {
        f"hr@{ranked.shape[1]}": float(found.mean()),
        f"ndcg@{ranked.shape[1]}": float(ndcg.mean()),
    }


@dataclass
class Trial:
    params: dict[str, float]
    iterations: int
    valid_metrics: dict[str, float]
    fit_seconds: float  # wall time of this fit up to this checkpoint (evaluation excluded)
    finished_at: float  # wall seconds since tuning started when the checkpoint was reached


@dataclass
class Tuning:
    trials: list[Trial] = field(default_factory=list)
    grid_points_tried: int = 0
    grid_points: int = 0
    best: Trial | None = None
    seconds_to_best: float = 0.0


def tune(
    name: str,
    data: Data,
    budget: float,
    threads: int,
    seed: int,
    cold_items: IntArray,
) -> tuple[Tuning, float]:
    """Fit each grid point (shuffled by seed) while the budget allows; score valid checkpoints."""
    grid = GRIDS[name]
    points = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    random.Random(seed).shuffle(points)
    checkpoints = CHECKPOINTS[name]
    train = data.matrix(data.train)
    users, targets = data.valid.users, data.valid.items

    def units(params: dict[str, float], iterations: int) -> float:
        return iterations * params["factors"] ** COST_POWER[name]

    tuning = Tuning(grid_points=len(points))
    rate = 0.0  # slowest seen seconds per cost unit (fit + checkpoint evaluation)
    started = time.perf_counter()
    for params in points:
        elapsed = time.perf_counter() - started
        if tuning.trials:
            predicted = rate * units(params, checkpoints[-1])
            best_fit = tuning.best.fit_seconds if tuning.best else 0.0
            if elapsed + predicted + max(best_fit, predicted) > budget:
                break
        model = make_model(name, params, checkpoints[-1], threads, seed)
        fit_started = time.perf_counter()
        eval_seconds = 0.0

        def on_iteration(
            iteration: int,
            *_: Any,
            params: dict[str, float] = params,
            model: MatrixFactorizationBase = model,
            fit_started: float = fit_started,
        ) -> None:
            nonlocal eval_seconds
            done = iteration + 1
            if done not in checkpoints:
                return
            now = time.perf_counter()
            ranked = top_k(model, users, train, EVAL_K, cold_items)
            trial = Trial(
                params=params,
                iterations=done,
                valid_metrics=hit_metrics(ranked, targets),
                fit_seconds=now - fit_started - eval_seconds,
                finished_at=now - started,
            )
            eval_seconds += time.perf_counter() - now
            tuning.trials.append(trial)
            key = _score(trial)
            if tuning.best is None or key > _score(tuning.best):
                tuning.best = trial
                tuning.seconds_to_best = trial.finished_at

        callback: Callable[..., None] = on_iteration
        model.fit(train, show_progress=False, callback=callback)
        tuning.grid_points_tried += 1
        rate = max(rate, (time.perf_counter() - fit_started) / units(params, checkpoints[-1]))
    return tuning, time.perf_counter() - started


def _score(trial: Trial) -> tuple[float, float]:
    return (trial.valid_metrics[f"ndcg@{EVAL_K}"], trial.valid_metrics[f"hr@{EVAL_K}"])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--split", type=Path, required=True, help="folder from peer_split.py")
    parser.add_argument("--model", choices=sorted(GRIDS), required=True)
    parser.add_argument("--budget-seconds", type=float, required=True)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    threads = int(os.environ.get("PEER_THREADS", "2"))

    data = load(args.split)
    trained = np.zeros(len(data.item_ids), dtype=bool)
    trained[data.train.items] = True
    cold_items = np.flatnonzero(~trained).astype(np.int64)

    with threadpool_limits(1, "blas"):
        tuning, tuning_seconds = tune(
            args.model, data, args.budget_seconds, threads, args.seed, cold_items
        )
        best = tuning.best
        assert best is not None
        model = make_model(args.model, best.params, best.iterations, threads, args.seed)
        fit_started = time.perf_counter()
        model.fit(data.matrix(data.train), show_progress=False)
        final_fit_seconds = time.perf_counter() - fit_started

        refit_valid = hit_metrics(
            top_k(model, data.valid.users, data.matrix(data.train), EVAL_K, cold_items),
            data.valid.items,
        )
        history = data.matrix(data.train, data.valid)
        test_users = data.test.users
        ranked = top_k(model, test_users, history, args.k, cold_items)

    lists = {
        data.user_ids[u]: [data.item_ids[i] for i in row if i >= 0]
        for u, row in zip(test_users.tolist(), ranked.tolist(), strict=True)
    }
    grid_text = ", ".join(f"{key} in {values}" for key, values in GRIDS[args.model].items())
    config = {**best.params, "factors": int(best.params["factors"])}
    result = {
        "peer": "implicit",
        "model": args.model,
        "library_version": implicit.__version__,
        "config": {
            **config,
            "iterations": best.iterations,
            "num_threads": threads,
            "random_state": args.seed,
        },
        "config_source": (
            f"tuned on validation targets (best NDCG@{EVAL_K}, then HR@{EVAL_K}; history = train), "
            f"grid: {grid_text}, iterations checkpoints {CHECKPOINTS[args.model]}; "
            f"{tuning.grid_points_tried} of {tuning.grid_points} grid points tried within the "
            "budget (seeded order)"
        ),
        "budget_seconds": args.budget_seconds,
        "train_seconds": round(tuning_seconds + final_fit_seconds, 2),
        "seconds_to_best": round(tuning.seconds_to_best, 2),
        "final_fit_seconds": round(final_fit_seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "valid_metrics": best.valid_metrics,
        "refit_valid_metrics": refit_valid,
        "trials": [
            {
                **t.params,
                "iterations": t.iterations,
                **t.valid_metrics,
                "fit_seconds": round(t.fit_seconds, 2),
            }
            for t in tuning.trials
        ],
        "lists": lists,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result) + "\n")
    print(
        f"implicit {args.model}: {len(lists)} lists, config {result['config']}, "
        f"valid {best.valid_metrics}, train {result['train_seconds']}s "
        f"({tuning.grid_points_tried} grid points)"
    )


if __name__ == "__main__":
    main()
