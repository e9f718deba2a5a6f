"""The item index (faiss): build, save and load, search by inner product, recall against exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recsys.ann import MAX_LISTS, IndexParams, ItemIndex, exact_top, recall
from recsys.errors import RecsysError


def clustered(count: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    """Items around 20 centres with norms that vary, and so do their inner products."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, 20, count)] + 0.3 * rng.standard_normal((count, dim))
    return (vectors * rng.uniform(0.5, 1.5, (count, 1))).astype(np.float32)


def test_recall_perfect_none_and_a_textbook_case() -> None:
    truth = np.asarray([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert recall(truth, truth) == 1.0
    assert recall(truth[:, ::-1].copy(), truth) == 1.0  # order within the top-k does not count
    assert recall(truth + 100, truth) == 0.0
    found = np.asarray([[1, 2, 9, 9, 3], [5, 0, 0, 0, 6]])  # 2 of 4, 1 of 4 in the first four
    assert recall(found, truth) == pytest.approx((2 / 4 + 1 / 4) / 2)


def test_exact_top_is_the_best_inner_products_best_first() -> None:
    items = clustered(300)
    users = clustered(7, seed=1)
    top = exact_top(items, users, 5)
    scores = users @ items.T
    for row, columns in enumerate(top):
        assert np.allclose(scores[row, columns], -np.sort(-scores[row])[:5])


def test_params_follow_the_catalogue_size() -> None:
    assert IndexParams.for_items(90).lists == 9
    assert IndexParams.for_items(1_000_000).lists == 1000
    assert IndexParams.for_items(5_000_000).lists == MAX_LISTS
    params = IndexParams.for_items(10_000, probes=4)
    assert IndexParams.from_dict(params.to_dict()) == params
    with pytest.raises(RecsysError, match="usearch"):
        IndexParams.from_dict({**params.to_dict(), "library": "usearch"})


def test_index_search_returns_exact_scores_and_survives_a_round_trip(tmp_path: Path) -> None:
    items = clustered(2000)
    users = clustered(50, seed=1)
    params = IndexParams.for_items(len(items))
    index = ItemIndex.build(items, params, threads=1)
    assert (index.size, index.dim) == (2000, 16)
    columns, scores = index.search(users, 10)
    assert columns.shape == scores.shape == (50, 10)
    # The candidates carry their exact inner products, best first.
    assert np.allclose(scores, np.take_along_axis(users @ items.T, columns, axis=1), atol=1e-4)
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    assert recall(columns, exact_top(items, users, 10)) >= 0.95

    index.save(tmp_path / "items.index")
    again = ItemIndex.load(tmp_path / "items.index", params.to_dict())
    same, _ = again.search(users, 10)
    assert np.array_equal(same, columns)


def test_probing_every_cell_is_exact_and_one_cell_of_many_is_not() -> None:
    items = clustered(1500)
    users = clustered(40, seed=2)
    truth = exact_top(items, users, 10)
    every = ItemIndex.build(items, IndexParams(lists=30, probes=30), threads=1)
    assert recall(every.search(users, 10)[0], truth) == 1.0
    narrow = ItemIndex.build(items, IndexParams(lists=300, probes=1), threads=1)
    assert recall(narrow.search(users, 10)[0], truth) < 0.9


def test_asking_for_more_than_the_probed_cells_hold_pads_with_minus_one() -> None:
    items = clustered(200)
    index = ItemIndex.build(items, IndexParams(lists=20, probes=1), threads=1)
    columns, scores = index.search(clustered(3, seed=3), 150)
    assert columns.shape == (3, 150)
    assert (columns < 0).any() and np.isneginf(scores[columns < 0]).all()
    assert (scores[columns >= 0] > -np.inf).all()


def test_a_damaged_index_file_is_an_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "items.index"
    path.write_bytes(b"not an index")
    with pytest.raises(RecsysError, match="cannot be read"):
        ItemIndex.load(path, IndexParams(lists=4))
