"""Full-ranking evaluation: scorers whose right answer is known, ties, exclusions, comparisons."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from recsys.data.splits import EvalSet, Ragged
from recsys.errors import RecsysError
from recsys.evaluation import EvalResult, Scorer, compare, evaluate

FloatMatrix = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def _ragged(rows: list[list[int]]) -> Ragged:
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    values = np.array([v for r in rows for v in r], dtype=np.int32)
    return Ragged(offsets, values)


def _eval_set(histories: list[list[int]], targets: list[list[int]]) -> EvalSet:
    """Users 1..U with the given histories and targets."""
    users = np.arange(1, len(histories) + 1, dtype=np.int32)
    return EvalSet(users, _ragged(histories), _ragged(targets))


def _random_eval_set(
    num_users: int, num_items: int, num_targets: int, seed: int
) -> tuple[EvalSet, list[list[int]]]:
    """Disjoint random histories (3-8 items) and targets per user; also the target lists."""
    rng = np.random.default_rng(seed)
    histories: list[list[int]] = []
    targets: list[list[int]] = []
    for _ in range(num_users):
        count = int(rng.integers(1, num_targets + 1))
        drawn = rng.choice(np.arange(1, num_items + 1), size=int(rng.integers(3, 9)) + count)
        chosen: list[int] = list(dict.fromkeys(drawn.tolist()))  # distinct, order kept
        targets.append(chosen[:count])
        histories.append(chosen[count:])
    return _eval_set(histories, targets), targets


def _table_scorer(table: npt.NDArray[np.floating[Any]]) -> Scorer:
    """Scores read from a (num_users + 1, I) table by user index."""

    def score(history: IntArray, users: IntArray) -> npt.NDArray[np.floating[Any]]:
        return table[users]

    return score


def _by_index(num_items: int) -> Scorer:
    """Item 1 first, then 2, 3, ... for every user."""

    def score(history: IntArray, users: IntArray) -> FloatMatrix:
        return np.tile(-np.arange(1, num_items + 1, dtype=np.float64), (len(users), 1))

    return score


def _oracle_table(targets: list[list[int]], num_items: int, seed: int = 0) -> FloatMatrix:
    """Random scores in [0, 1) and 2.0 for each user's targets: targets on top."""
    table = np.random.default_rng(seed).random((len(targets) + 1, num_items))
    for user, items in enumerate(targets, start=1):
        table[user, np.array(items) - 1] = 2.0
    return table


# --- leave-last-out --------------------------------------------------------------------------


def test_evaluate_oracle_scorer_is_perfect() -> None:
    eval_set, targets = _random_eval_set(40, 100, 1, seed=0)
    result = evaluate(
        _table_scorer(_oracle_table(targets, 100)), eval_set, num_items=100, protocol="loo"
    )
    assert result.mean("ndcg@10") == 1.0
    assert result.mean("hr@10") == 1.0
    assert result.mean("mrr@10") == 1.0
    assert set(result.metrics) == {"ndcg@10", "ndcg@20", "hr@10", "hr@20", "mrr@10", "coverage@10"}
    assert result.users.dtype == np.int32 and result.users.tolist() == list(range(1, 41))


def test_evaluate_target_ranked_last_scores_zero() -> None:
    eval_set, targets = _random_eval_set(40, 100, 1, seed=1)
    table = _oracle_table(targets, 100)
    table[table == 2.0] = -1.0  # below every random score
    result = evaluate(_table_scorer(table), eval_set, num_items=100, protocol="loo")
    assert all(result.mean(name) == 0.0 for name in ("ndcg@10", "ndcg@20", "hr@20", "mrr@10"))


def test_evaluate_excludes_seen_items_from_the_full_history() -> None:
    # History of 6 items but the scorer only reads the last 2; it puts every history item
    # (even those it cannot see) first and the target next: with the full history excluded
    # the target is at rank 0.
    histories = [[1, 2, 3, 4, 5, 6]]
    seen_lengths: list[int] = []

    def score(history: IntArray, users: IntArray) -> FloatMatrix:
        seen_lengths.append(history.shape[1])
        assert history[0].tolist() == [5, 6]
        scores = np.zeros((1, 20))
        scores[0, :6] = 10.0  # items 1..6
        scores[0, 9] = 5.0  # item 10, the target
        return scores

    result = evaluate(score, _eval_set(histories, [[10]]), num_items=20, protocol="loo", max_len=2)
    assert seen_lengths == [2]
    assert result.per_user["mrr@10"].tolist() == [1.0]


def test_evaluate_target_in_history_is_a_miss() -> None:
    # A re-consumed item cannot be recommended once seen items are excluded.
    table = np.zeros((2, 20))
    table[1, 2] = 9.0  # item 3 scores highest, but it is in the history
    result = evaluate(
        _table_scorer(table), _eval_set([[3, 4]], [[3]]), num_items=20, protocol="loo"
    )
    assert result.per_user["hr@20"].tolist() == [0.0]


def test_evaluate_breaks_ties_pessimistically() -> None:
    eval_set, _ = _random_eval_set(30, 50, 1, seed=2)
    constant = _table_scorer(np.ones((31, 50)))
    result = evaluate(constant, eval_set, num_items=50, protocol="loo")
    assert result.mean("hr@10") == 0.0 and result.mean("ndcg@20") == 0.0
    # 8 items, history of 2: 6 candidates, all tied, the target goes last (rank 5).
    small_constant = _table_scorer(np.ones((2, 8)))
    small = evaluate(small_constant, _eval_set([[1, 2]], [[3]]), num_items=8, protocol="loo")
    assert small.per_user["hr@10"].tolist() == [1.0]
    assert small.per_user["ndcg@10"][0] == pytest.approx(1 / math.log2(5 + 2))
    assert small.per_user["mrr@10"][0] == pytest.approx(1 / 6)


def test_evaluate_ties_against_a_brute_force_ranking() -> None:
    num_items = 30
    eval_set, targets = _random_eval_set(50, num_items, 1, seed=3)
    table = np.random.default_rng(4).integers(0, 3, (51, num_items)).astype(np.float64)
    result = evaluate(_table_scorer(table), eval_set, num_items=num_items, protocol="loo")
    for row in range(50):
        user, target = row + 1, targets[row][0]
        history = set(eval_set.history.row(row).tolist())
        # Pessimistic rank: every other candidate with a score >= the target's is ahead.
        others = [i for i in range(1, num_items + 1) if i not in history and i != target]
        rank = sum(table[user, i - 1] >= table[user, target - 1] for i in others)
        expected = 1 / math.log2(rank + 2) if rank < 10 else 0.0
        assert result.per_user["ndcg@10"][row] == pytest.approx(expected)


def test_evaluate_does_not_depend_on_batch_size() -> None:
    eval_set, _ = _random_eval_set(37, 60, 1, seed=5)
    table = np.random.default_rng(6).random((38, 60))
    results = [
        evaluate(_table_scorer(table), eval_set, num_items=60, protocol="loo", batch_size=b)
        for b in (1, 8, 1024)
    ]
    for other in results[1:]:
        for name, values in results[0].per_user.items():
            np.testing.assert_array_equal(values, other.per_user[name])
        assert other.coverage == results[0].coverage


def test_evaluate_coverage_and_topk() -> None:
    # Every user gets items 1, 2, 3, ... in that order, minus their history (all above 30).
    eval_set = _eval_set([[31, 32], [40], [45, 46, 47]], [[33], [41], [48]])
    result = evaluate(_by_index(50), eval_set, num_items=50, protocol="loo", keep_topk=True)
    assert result.coverage == {"coverage@10": 10 / 50}
    assert result.topk is not None and result.topk.shape == (3, 20)
    assert result.topk[0].tolist() == list(range(1, 21))
    # Fewer candidates than k: empty slots are 0 and are not counted as items.
    few = evaluate(
        _by_index(5), _eval_set([[1, 2]], [[5]]), num_items=5, protocol="loo", keep_topk=True
    )
    assert few.topk is not None and few.topk[0].tolist()[:4] == [3, 4, 5, 0]
    assert few.coverage == {"coverage@10": 3 / 5}


def test_evaluate_rejects_bad_scores_and_bad_sets() -> None:
    eval_set = _eval_set([[1]], [[2]])

    def wrong_shape(history: IntArray, users: IntArray) -> FloatMatrix:
        return np.zeros((len(users), 9))

    def nan(history: IntArray, users: IntArray) -> FloatMatrix:
        return np.full((len(users), 10), np.nan)

    with pytest.raises(RecsysError, match="shape"):
        evaluate(wrong_shape, eval_set, num_items=10, protocol="loo")
    with pytest.raises(RecsysError, match="NaN"):
        evaluate(nan, eval_set, num_items=10, protocol="loo")
    two_targets = _eval_set([[1]], [[2, 3]])
    zeros = _table_scorer(np.zeros((2, 10)))
    with pytest.raises(RecsysError, match="exactly one target"):
        evaluate(zeros, two_targets, num_items=10, protocol="loo")
    with pytest.raises(RecsysError, match="unknown protocol"):
        evaluate(zeros, eval_set, num_items=10, protocol="random")  # type: ignore[arg-type]


# --- temporal --------------------------------------------------------------------------------


def test_evaluate_temporal_oracle_is_perfect_even_with_more_targets_than_k() -> None:
    eval_set, targets = _random_eval_set(30, 200, 15, seed=7)
    assert max(len(t) for t in targets) > 10
    result = evaluate(
        _table_scorer(_oracle_table(targets, 200)), eval_set, num_items=200, protocol="temporal"
    )
    assert set(result.metrics) == {"recall@10", "recall@20", "ndcg@10", "ndcg@20", "coverage@10"}
    for name in ("recall@10", "recall@20", "ndcg@10", "ndcg@20"):
        assert result.per_user[name] == pytest.approx(np.ones(30)), name


def test_evaluate_temporal_targets_last_and_constant_score_zero() -> None:
    eval_set, targets = _random_eval_set(30, 200, 5, seed=8)
    table = _oracle_table(targets, 200)
    table[table == 2.0] = -1.0
    last = evaluate(_table_scorer(table), eval_set, num_items=200, protocol="temporal")
    constant = evaluate(
        _table_scorer(np.ones((31, 200))), eval_set, num_items=200, protocol="temporal"
    )
    for result in (last, constant):
        assert result.mean("recall@20") == 0.0 and result.mean("ndcg@20") == 0.0


def test_evaluate_temporal_textbook_case() -> None:
    # Items ranked 1, 2, 3, ... (history empty); targets {1, 3, 15}:
    # ranks 0, 2, 14 -> recall@10 = 2 / min(10, 3) = 2/3,
    # ndcg@10 = (1 + 1/log2(4)) / (1 + 1/log2(3) + 1/log2(4)) = 1.5 / 2.13093 = 0.70392.
    eval_set = _eval_set([[]], [[15, 1, 3, 3]])  # the duplicate 3 counts once
    result = evaluate(_by_index(30), eval_set, num_items=30, protocol="temporal")
    assert result.per_user["recall@10"][0] == pytest.approx(2 / 3)
    assert result.per_user["ndcg@10"][0] == pytest.approx(0.70392, abs=1e-5)
    assert result.per_user["recall@20"][0] == pytest.approx(1.0)


def _brute_force_temporal(
    table: FloatMatrix, histories: list[set[int]], targets: list[list[int]], k: int
) -> tuple[list[float], list[float]]:
    """Recall@k, NDCG@k from an explicit pessimistic list: score down, non-targets first."""
    num_items = table.shape[1]
    recalls, ndcgs = [], []
    for row, (history, wanted) in enumerate(zip(histories, targets, strict=True)):
        user, relevant = row + 1, set(wanted)
        candidates = [i for i in range(1, num_items + 1) if i not in history]
        ranking = sorted(candidates, key=lambda i: (-table[user, i - 1], i in relevant, i))
        top = ranking[:k]
        hits = [p for p, item in enumerate(top) if item in relevant]
        ideal = sum(1 / math.log2(p + 2) for p in range(min(k, len(relevant))))
        recalls.append(len(hits) / min(k, len(relevant)))
        ndcgs.append(sum(1 / math.log2(p + 2) for p in hits) / ideal)
    return recalls, ndcgs


@pytest.mark.parametrize("num_items", [15, 40])  # k_max >= I, and the partitioned block
def test_evaluate_temporal_ties_against_a_brute_force_ranking(num_items: int) -> None:
    eval_set, targets = _random_eval_set(60, num_items, 6, seed=num_items)
    # Few distinct scores: many ties, between targets and with non-targets.
    table = np.random.default_rng(9).integers(0, 3, (61, num_items)).astype(np.float32)
    result = evaluate(_table_scorer(table), eval_set, num_items=num_items, protocol="temporal")
    histories = [set(eval_set.history.row(r).tolist()) for r in range(60)]
    for k in (10, 20):
        recalls, ndcgs = _brute_force_temporal(table.astype(np.float64), histories, targets, k)
        np.testing.assert_allclose(result.per_user[f"recall@{k}"], recalls)
        np.testing.assert_allclose(result.per_user[f"ndcg@{k}"], ndcgs)


def test_evaluate_temporal_target_in_history_is_a_miss_but_counts() -> None:
    # Target 3 is also in the history: never hit, still one of |T| = 2.
    result = evaluate(_by_index(20), _eval_set([[3]], [[1, 3]]), num_items=20, protocol="temporal")
    assert result.per_user["recall@10"].tolist() == [0.5]


# --- summaries and comparisons ---------------------------------------------------------------


def _pair(seed: int = 10) -> tuple[EvalResult, EvalResult, EvalSet]:
    eval_set, targets = _random_eval_set(300, 100, 1, seed=seed)
    oracle = evaluate(
        _table_scorer(_oracle_table(targets, 100)), eval_set, num_items=100, protocol="loo"
    )
    table = np.random.default_rng(seed).random((301, 100))
    random = evaluate(_table_scorer(table), eval_set, num_items=100, protocol="loo")
    return random, oracle, eval_set


def test_summary_gives_value_and_interval_for_every_metric() -> None:
    random, _, _ = _pair()
    summary = random.summary(num_resamples=200)
    assert set(summary) == set(random.metrics)
    for name in random.per_user:
        entry = summary[name]
        assert entry["value"] == pytest.approx(random.mean(name))
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]
    assert summary["hr@20"]["ci_low"] < summary["hr@20"]["ci_high"]
    coverage = summary["coverage@10"]
    assert coverage["ci_low"] == coverage["value"] == coverage["ci_high"]


def test_to_dict_is_json_and_round_trips() -> None:
    random, oracle, _ = _pair()
    text = json.dumps(random.to_dict(num_resamples=50, per_user=True))
    restored = EvalResult.from_dict(json.loads(text))
    assert restored.mean("ndcg@10") == pytest.approx(random.mean("ndcg@10"))
    assert restored.coverage == random.coverage
    assert compare(restored, oracle)["diff"] == pytest.approx(compare(random, oracle)["diff"])
    brief = json.loads(json.dumps(random.to_dict(num_resamples=50)))
    assert brief["metrics"]["hr@10"]["value"] == pytest.approx(random.mean("hr@10"))
    assert "per_user" not in brief
    with pytest.raises(RecsysError, match="without per-user"):
        EvalResult.from_dict(brief)


def test_compare_finds_the_better_model() -> None:
    random, oracle, _ = _pair()
    result = compare(random, oracle, "ndcg@10")
    assert result["metric"] == "ndcg@10" and result["protocol"] == "loo"
    assert result["diff"] == pytest.approx(oracle.mean("ndcg@10") - random.mean("ndcg@10"))
    assert result["ci_low"] > 0 and result["p_value"] < 0.01
    assert compare(random, random)["p_value"] == 1.0


def test_compare_refuses_different_protocols_users_or_sets() -> None:
    random, oracle, eval_set = _pair()
    temporal = evaluate(
        _table_scorer(np.zeros((301, 100))), eval_set, num_items=100, protocol="temporal"
    )
    with pytest.raises(RecsysError, match="different protocols"):
        compare(random, temporal)
    other, _, _ = _pair(seed=11)
    with pytest.raises(RecsysError, match="different eval sets"):
        compare(random, other)
    fewer_set = EvalSet(eval_set.users[:-1], eval_set.history, _ragged([[1]] * 299))
    fewer = evaluate(_table_scorer(np.zeros((301, 100))), fewer_set, num_items=100, protocol="loo")
    with pytest.raises(RecsysError, match="different users"):
        compare(random, fewer)
    with pytest.raises(RecsysError, match="per-user metric"):
        compare(random, oracle, "coverage@10")
    with pytest.raises(RecsysError, match="no metric"):
        random.mean("recall@10")


def test_evaluation_imports_no_torch() -> None:
    # Serving scores with onnxruntime and must not load torch; evaluation and metrics run there.
    code = "import sys, recsys.evaluation, recsys.metrics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_top_items_are_the_same_with_and_without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch  # noqa: F401  (loaded: the fast path)

    from recsys.evaluation import _top_items

    rng = np.random.default_rng(0)
    scores = rng.standard_normal((64, 300)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.3] = -np.inf
    scores[0, :] = -np.inf
    scores[1, :5] = [0.5, 0.1, 0.9, 0.3, 0.7]
    scores[1, 5:] = -np.inf  # fewer finite scores than the list is long
    fast = {length: _top_items(scores.copy(), length) for length in (1, 10, 300)}
    monkeypatch.delitem(sys.modules, "torch")
    for length, expected in fast.items():
        assert np.array_equal(_top_items(scores.copy(), length), expected)
    assert not fast[10][0].any()
    assert fast[10][1].tolist() == [3, 5, 1, 4, 2, 0, 0, 0, 0, 0]


def test_a_large_catalogue_is_scored_in_fewer_users_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import recsys.evaluation as evaluation

    eval_set, _ = _random_eval_set(num_users=50, num_items=400, num_targets=1, seed=3)
    rows: list[int] = []

    def score(history: IntArray, users: IntArray) -> FloatMatrix:
        rows.append(len(users))
        return _by_index(400)(history, users)

    whole = evaluate(score, eval_set, num_items=400, protocol="loo", batch_size=1024)
    assert rows == [50]
    rows.clear()
    monkeypatch.setattr(evaluation, "BLOCK_CELLS", 400 * 8)  # 8 users' scores at a time
    capped = evaluate(score, eval_set, num_items=400, protocol="loo", batch_size=1024)
    assert max(rows) == 8 and sum(rows) == 50
    for name, values in whole.per_user.items():
        assert np.array_equal(values, capped.per_user[name])
