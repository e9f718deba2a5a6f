"""Training batches for each ``batch_kind`` of the Recommender interface, and eval queries.

Sequence batches train on all positions at once: for each user the last ``max_len + 1``
training items give inputs ``seq[:-1]`` and next-item targets ``seq[1:]`` (left-padded).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from recsys.data.splits import Ragged, TrainSet

# Pure-numpy helpers live in splits (evaluation must not import torch); re-exported here.
from recsys.data.splits import eval_query_arrays as eval_query_arrays
from recsys.data.splits import left_padded as left_padded

# What one more encoder pass over a group of rows costs, in padded positions: kernel launches
# and Python overhead of a small forward (and backward) pass. Measured on SASRec (D = 128, 2
# cores, Amazon Toys): 512 to 2,048 all gave the same epoch time within noise.
GROUP_OVERHEAD_POSITIONS = 1024


def length_groups_of(
    lengths: npt.NDArray[np.integer],
    overhead: int = GROUP_OVERHEAD_POSITIONS,
    max_rows: int | None = None,
) -> list[npt.NDArray[np.int64]]:
    """Row indices of left-padded histories grouped so that each group pads little.

    ``lengths`` (B,) are the rows' history lengths. A group is a run of rows in order of
    length, encoded cut to its longest row; the groups minimise the padded positions encoded
    plus ``overhead`` per group, with at most ``max_rows`` rows each (dynamic programming,
    O(B * max_rows) in numpy). One long history then no longer pads all the rows beside it.
    """
    order = np.argsort(-np.asarray(lengths), kind="stable")
    descending = np.asarray(lengths)[order].astype(np.int64)
    rows = len(order)
    cap = rows if max_rows is None else max(1, max_rows)
    # best[j]: cheapest cost of grouping the first j rows (longest first); the group i..j-1
    # costs (j - i) * descending[i], its longest row, plus the overhead.
    best = np.zeros(rows + 1, dtype=np.int64)
    start = np.zeros(rows + 1, dtype=np.int64)
    for j in range(1, rows + 1):
        first = max(0, j - cap)
        starts = np.arange(first, j)
        costs = best[first:j] + (j - starts) * descending[first:j] + overhead
        cheapest = int(costs.argmin())
        start[j], best[j] = first + cheapest, costs[cheapest]
    groups: list[npt.NDArray[np.int64]] = []
    end = rows
    while end > 0:
        groups.append(order[start[end] : end])
        end = int(start[end])
    return groups[::-1]


def sequence_batches(
    train: TrainSet, batch_size: int, max_len: int, rng: np.random.Generator, *, pool: int = 1
) -> Iterator[dict[str, Tensor]]:
    """All-position next-item batches: {"history": (B, L), "target": (B, L)}, 0 = padding.

    ``pool=1`` gives plain random batches. With ``pool > 1`` users are shuffled, then each
    run of ``pool`` batches' worth of them is sorted by history length before it is cut into
    batches, and the batches come out in random order. A batch then holds histories of similar
    length, so models that trim the columns that are padding in every row
    (``trim_left_padding``) skip most of the padding: on ml-100k at ``max_len`` 200 less than
    half of the padded positions hold an item.

    Grouped batches also carry a scalar ``"weight"``: the batch's target positions over the
    epoch's mean per batch. A model's loss is a mean over its batch's positions, so without it
    a batch of short histories would weigh each of its positions several times more than a batch
    of long ones, and the epoch would optimise a per-user rather than a per-position average.
    On ml-100k that reweighting cost GRU4Rec and Caser accuracy and sometimes stalled Caser
    after a few epochs; the weight keeps the objective of random batches in expectation.
    Every user with at least two training items is in exactly one batch per epoch.
    """
    if pool < 1:
        raise ValueError(f"pool must be at least 1, got {pool}")
    lengths = train.sequences.lengths()
    users = np.flatnonzero(lengths >= 2)
    rng.shuffle(users)
    span = batch_size * pool
    batches: list[npt.NDArray[np.int64]] = []
    for start in range(0, len(users), span):
        run = users[start : start + span]
        if pool > 1:
            run = run[np.argsort(np.minimum(lengths[run], max_len + 1), kind="stable")]
        batches.extend(run[i : i + batch_size] for i in range(0, len(run), batch_size))
    # Target positions of a user: every item of the last max_len + 1 but the first.
    positions_per_batch = float((np.minimum(lengths[users], max_len + 1) - 1).sum()) / max(
        len(batches), 1
    )
    for index in rng.permutation(len(batches)):
        window = left_padded(train.sequences, batches[index], max_len + 1)  # (B, L + 1)
        history, target = window[:, :-1], window[:, 1:].copy()
        target[history == 0] = 0  # no target where there is no input yet
        batch = {"history": torch.from_numpy(history), "target": torch.from_numpy(target)}
        if pool > 1:
            batch["weight"] = torch.tensor(float((target > 0).sum()) / positions_per_batch)
        yield batch


def pair_batches(
    train: TrainSet,
    batch_size: int,
    num_items: int,
    num_negatives: int,
    rng: np.random.Generator,
) -> Iterator[dict[str, Tensor]]:
    """(user, positive item, uniformly sampled negatives) for every training event."""
    order = rng.permutation(len(train))
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        negatives = rng.integers(1, num_items + 1, size=(len(chosen), num_negatives))
        yield {
            "user": torch.from_numpy(train.user_idx[chosen].astype(np.int64)),
            "item": torch.from_numpy(train.item_idx[chosen].astype(np.int64)),
            "negatives": torch.from_numpy(negatives.astype(np.int64)),
        }


def row_batches(
    train: TrainSet, batch_size: int, num_items: int, rng: np.random.Generator
) -> Iterator[dict[str, Tensor]]:
    """Multi-hot rows of the user-item matrix: {"user": (B,), "rows": (B, I)}."""
    users = np.flatnonzero(train.sequences.lengths() > 0)
    rng.shuffle(users)
    for start in range(0, len(users), batch_size):
        chosen = users[start : start + batch_size]
        rows = multi_hot(train.sequences, chosen, num_items)
        yield {"user": torch.from_numpy(chosen.astype(np.int64)), "rows": rows}


def multi_hot(rows: Ragged, which: npt.NDArray[np.int64], num_items: int) -> Tensor:
    """(R, I) float32 with 1 where the row holds item index ``j + 1``."""
    out = torch.zeros((len(which), num_items), dtype=torch.float32)
    for r, row in enumerate(which):
        items = rows.row(int(row))
        out[r, torch.from_numpy(items.astype(np.int64) - 1)] = 1.0
    return out
