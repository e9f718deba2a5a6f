"""Grouping rows of left-padded histories by length (recsys.data.batches.length_groups_of)."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from recsys.data.batches import length_groups_of


@given(
    lengths=st.lists(st.integers(0, 200), min_size=1, max_size=300),
    max_rows=st.integers(1, 64),
    overhead=st.sampled_from([0, 64, 1024]),
)
def test_length_groups_partition_the_rows_and_pad_no_more_than_sorted_chunks(
    lengths: list[int], max_rows: int, overhead: int
) -> None:
    used = np.array(lengths)
    groups = length_groups_of(used, overhead=overhead, max_rows=max_rows)
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(used)))
    assert all(1 <= len(group) <= max_rows for group in groups)
    for longer, shorter in itertools.pairwise(groups):
        assert used[longer].min() >= used[shorter].max()  # runs of the rows sorted by length

    def cost(chunks: list[np.ndarray]) -> int:
        return sum(len(rows) * int(used[rows].max()) + overhead for rows in chunks)

    ordered = np.argsort(-used, kind="stable")
    fixed = [ordered[i : i + max_rows] for i in range(0, len(used), max_rows)]
    assert cost(groups) <= cost(fixed)
