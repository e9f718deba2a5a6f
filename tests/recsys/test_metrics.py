"""Ranking metrics at three points each (perfect, no hit, hand-computed) and the bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recsys.metrics import (
    bootstrap_ci,
    bootstrap_means,
    coverage_at_k,
    hr_at_k,
    mrr_at_k,
    ndcg_at_k,
    ndcg_at_k_multi,
    paired_bootstrap,
    recall_at_k,
)


def test_ndcg_at_k_perfect_none_and_textbook() -> None:
    assert ndcg_at_k([0, 0], 10).tolist() == [1.0, 1.0]
    assert ndcg_at_k([10, 500], 10).tolist() == [0.0, 0.0]  # rank 10 is the 11th slot
    # rank 2 (third slot): 1 / log2(2 + 2) = 1 / 2; rank 6: 1 / log2(8) = 1 / 3
    np.testing.assert_allclose(ndcg_at_k([2, 6], 10), [0.5, 1 / 3])


def test_hr_at_k_perfect_none_and_textbook() -> None:
    assert hr_at_k([0, 3], 10).tolist() == [1.0, 1.0]
    assert hr_at_k([10, 11], 10).tolist() == [0.0, 0.0]
    # ranks 0, 9, 10 at k = 10: the first two are in the top 10, so the mean is 2 / 3
    assert hr_at_k([0, 9, 10], 10).mean() == pytest.approx(2 / 3)


def test_mrr_at_k_perfect_none_and_textbook() -> None:
    assert mrr_at_k([0], 10).tolist() == [1.0]
    assert mrr_at_k([10], 10).tolist() == [0.0]
    # 1 / (rank + 1): ranks 1, 3 -> 1/2, 1/4; rank 12 is beyond k -> 0; mean = 0.75 / 3 = 0.25
    np.testing.assert_allclose(mrr_at_k([1, 3, 12], 10), [0.5, 0.25, 0.0])
    assert mrr_at_k([1, 3, 12], 10).mean() == pytest.approx(0.25)


def test_single_target_metrics_survive_a_huge_never_rank() -> None:
    never = np.iinfo(np.int64).max // 2
    assert ndcg_at_k([never], 10).tolist() == [0.0]
    assert mrr_at_k([never], 10).tolist() == [0.0]


def test_single_target_metrics_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="negative"):
        ndcg_at_k([-1], 10)
    with pytest.raises(ValueError, match="k must be positive"):
        hr_at_k([0], 0)


def test_recall_at_k_perfect_none_and_textbook() -> None:
    # Two users: targets at ranks {0, 1, 2} and {0}.
    assert recall_at_k([0, 1, 2, 0], [0, 3, 4], 10).tolist() == [1.0, 1.0]
    assert recall_at_k([10, 11, 12, 40], [0, 3, 4], 10).tolist() == [0.0, 0.0]
    # User 1: ranks 0, 3, 12 -> 2 hits / min(10, 3) = 2/3.
    # User 2: 15 targets, 5 in the top 10 -> 5 / min(10, 15) = 0.5 (not 5 / 15).
    ranks = [0, 3, 12, *[0, 2, 4, 6, 8], *range(20, 30)]
    np.testing.assert_allclose(recall_at_k(ranks, [0, 3, 18], 10), [2 / 3, 0.5])


def test_recall_at_k_all_slots_filled_is_perfect_with_more_targets_than_k() -> None:
    # 12 targets, the first 10 slots all targets: 10 / min(10, 12) = 1.
    assert recall_at_k(list(range(12)), [0, 12], 10).tolist() == [1.0]


def test_ndcg_at_k_multi_perfect_none_and_textbook() -> None:
    assert ndcg_at_k_multi([0, 1, 2], [0, 3], 10).tolist() == [pytest.approx(1.0)]
    assert ndcg_at_k_multi([10, 11], [0, 2], 10).tolist() == [0.0]
    # |T| = 3, targets at ranks 0 and 2, the third beyond k:
    # DCG  = 1/log2(2) + 1/log2(4)            = 1 + 0.5           = 1.5
    # IDCG = 1/log2(2) + 1/log2(3) + 1/log2(4) = 1 + 0.63093 + 0.5 = 2.13093
    # NDCG = 1.5 / 2.13093 = 0.70392
    expected = 1.5 / (1 + 1 / math.log2(3) + 0.5)
    assert ndcg_at_k_multi([0, 2, 15], [0, 3], 10)[0] == pytest.approx(expected)
    assert expected == pytest.approx(0.70392, abs=1e-5)


def test_ndcg_at_k_multi_ideal_is_capped_at_k() -> None:
    # 3 targets, k = 2, both slots are targets: IDCG has only 2 terms, so NDCG = 1.
    assert ndcg_at_k_multi([0, 1, 7], [0, 3], 2)[0] == pytest.approx(1.0)


def test_ndcg_at_k_multi_with_one_target_matches_ndcg_at_k() -> None:
    ranks = [0, 2, 7, 30]
    np.testing.assert_allclose(ndcg_at_k_multi(ranks, [0, 1, 2, 3, 4], 10), ndcg_at_k(ranks, 10))


def test_multi_target_metrics_reject_users_without_targets() -> None:
    with pytest.raises(ValueError, match="at least one target"):
        recall_at_k([0], [0, 1, 1], 10)
    with pytest.raises(ValueError, match="offsets"):
        ndcg_at_k_multi([0, 1], [0, 1], 10)


def test_coverage_at_k_perfect_none_and_textbook() -> None:
    assert coverage_at_k([[1, 2], [3, 4]], 4) == 1.0
    assert coverage_at_k([[0, 0], [0, 0]], 4) == 0.0  # empty slots are no items
    # distinct items {1, 2, 3} out of 6 -> 0.5
    assert coverage_at_k([[1, 2], [2, 3], [3, 1]], 6) == 0.5


def test_coverage_at_k_rejects_out_of_range_items() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        coverage_at_k([[7]], 6)


def test_bootstrap_ci_contains_the_mean_and_narrows_with_more_users() -> None:
    rng = np.random.default_rng(1)
    small = (rng.random(100) < 0.3).astype(float)
    large = (rng.random(10_000) < 0.3).astype(float)
    low_s, high_s = bootstrap_ci(small)
    low_l, high_l = bootstrap_ci(large)
    assert low_s <= small.mean() <= high_s
    assert low_l <= large.mean() <= high_l
    # The width shrinks like 1 / sqrt(U): 100x the users gives about a tenth of the width.
    assert high_l - low_l < (high_s - low_s) / 5


def test_bootstrap_ci_is_reproducible_and_seeded() -> None:
    values = np.random.default_rng(2).random(500)
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)


def test_bootstrap_ci_of_constant_values_is_a_point() -> None:
    assert bootstrap_ci(np.full(50, 0.25)) == pytest.approx((0.25, 0.25))
    low, high = bootstrap_ci(np.array([]))
    assert math.isnan(low) and math.isnan(high)


def test_bootstrap_means_resamples_all_metrics_with_the_same_draws() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.random(300), rng.random(300)
    stacked = bootstrap_means(np.stack([a, b]), 200, seed=9)
    np.testing.assert_allclose(stacked[0], bootstrap_means(a, 200, seed=9))
    np.testing.assert_allclose(stacked[1], bootstrap_means(b, 200, seed=9))


def test_paired_bootstrap_detects_a_real_difference() -> None:
    rng = np.random.default_rng(6)
    a = rng.random(2000)
    b = a + 0.05 + rng.normal(0.0, 0.1, 2000)
    result = paired_bootstrap(a, b)
    assert result["diff"] == pytest.approx(float(np.mean(b - a)))
    assert result["diff"] > 0 and result["ci_low"] > 0
    assert result["p_value"] < 0.01
    assert result["wins"] > result["losses"]
    assert result["wins"] + result["losses"] + result["ties"] == result["num_users"] == 2000
    # Swapping the models flips the sign and keeps the evidence.
    swapped = paired_bootstrap(b, a)
    assert swapped["diff"] == pytest.approx(-result["diff"])
    assert swapped["ci_high"] < 0 and swapped["p_value"] < 0.01


def test_paired_bootstrap_finds_no_difference_where_there_is_none() -> None:
    rng = np.random.default_rng(7)
    a = rng.random(1000)
    noise = rng.normal(0.0, 0.2, 500)
    b = a + np.concatenate([noise, -noise])  # per-user differences that cancel exactly
    result = paired_bootstrap(a, b)
    assert result["ci_low"] < 0 < result["ci_high"]
    assert result["p_value"] > 0.5
    same = paired_bootstrap(a, a)
    assert same["diff"] == 0.0 and same["p_value"] == 1.0 and same["ties"] == 1000


def test_paired_bootstrap_needs_aligned_users() -> None:
    with pytest.raises(ValueError, match="equal length"):
        paired_bootstrap([0.1, 0.2], [0.1])
