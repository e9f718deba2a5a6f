"""Splits: exact answers on a hand-made snapshot, and no target leaking into training."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from recsys.data.extract import IdMap, Snapshot, SnapshotDescriptor
from recsys.data.splits import (
    EvalSet,
    Ragged,
    Split,
    leave_last_out,
    left_padded,
    sample_users,
    split,
    temporal,
)
from recsys.data.synthetic import SyntheticConfig, generate
from recsys.errors import RecsysError


def _snapshot(events: list[tuple[int, int, int]], num_users: int, num_items: int) -> Snapshot:
    """A snapshot of (user, item, time) events, put in the canonical (user, time, item) order."""
    users = np.array([e[0] for e in events], dtype=np.int32)
    items = np.array([e[1] for e in events], dtype=np.int32)
    times = np.array([e[2] for e in events], dtype=np.int64)
    order = np.lexsort((items, times, users))
    n = len(events)
    descriptor = SnapshotDescriptor("sqlite", "", None, n, 0, 0, 0, 0, {}, None, None, None, "")
    return Snapshot(
        user_idx=users[order],
        item_idx=items[order],
        occurred_at=times[order],
        value=np.full(n, np.nan, np.float32),
        event=np.zeros(n, np.int16),
        event_types=("view",),
        users=IdMap.from_ids([f"u{i}" for i in range(1, num_users + 1)]),
        items=IdMap.from_ids([f"i{i}" for i in range(1, num_items + 1)]),
        descriptor=descriptor,
    )


@pytest.fixture(scope="module")
def synthetic() -> Snapshot:
    """A generated dataset as a snapshot: ids factorized to 1..n, sorted by (user, time)."""
    frame = generate(
        SyntheticConfig(num_users=300, num_items=150, num_interactions=6000)
    ).interactions
    users, user_ids = pd.factorize(frame["user_id"])
    items, item_ids = pd.factorize(frame["item_id"])
    times = frame["occurred_at"].to_numpy(np.int64)
    order = np.lexsort((items, times, users))
    n = len(frame)
    descriptor = SnapshotDescriptor("sqlite", "", None, n, 0, 0, 0, 0, {}, None, None, None, "")
    return Snapshot(
        user_idx=(users[order] + 1).astype(np.int32),
        item_idx=(items[order] + 1).astype(np.int32),
        occurred_at=times[order],
        value=np.full(n, np.nan, np.float32),
        event=np.zeros(n, np.int16),
        event_types=("view",),
        users=IdMap.from_ids(np.asarray(user_ids, dtype=object)),
        items=IdMap.from_ids(np.asarray(item_ids, dtype=object)),
        descriptor=descriptor,
    )


def _rows(ragged: Ragged) -> list[list[int]]:
    return [ragged.row(r).tolist() for r in range(len(ragged))]


def _sequences(snapshot: Snapshot) -> dict[int, list[tuple[int, int]]]:
    """Each user's (item, time) events in order."""
    out: dict[int, list[tuple[int, int]]] = {}
    for u, i, t in zip(
        snapshot.user_idx.tolist(),
        snapshot.item_idx.tolist(),
        snapshot.occurred_at.tolist(),
        strict=True,
    ):
        out.setdefault(u, []).append((i, t))
    return out


# --- leave-last-out --------------------------------------------------------------------------

HAND_MADE = [
    (1, 1, 10), (1, 2, 20), (1, 3, 30), (1, 4, 40),  # 4 events: train 1, 2; valid 3; test 4
    (2, 2, 5), (2, 5, 6), (2, 1, 7),  # 3 events: train 2; valid 5; test 1
    (3, 3, 1), (3, 4, 2),  # 2 events: train only
]  # fmt: skip


def test_leave_last_out_hand_made() -> None:
    result = leave_last_out(_snapshot(HAND_MADE, num_users=4, num_items=5))
    assert result.protocol == "loo" and (result.num_users, result.num_items) == (4, 5)
    assert _rows(result.train.sequences) == [[], [1, 2], [2], [3, 4], []]
    for eval_set in (result.valid, result.test):
        assert eval_set.users.tolist() == [1, 2]
    assert _rows(result.valid.targets) == [[3], [5]]
    assert _rows(result.valid.history) == [[1, 2], [2]]
    assert _rows(result.test.targets) == [[4], [1]]
    assert _rows(result.test.history) == [[1, 2, 3], [2, 5]]
    assert result.description["train_only_users"] == 1
    assert result.description["evaluated_users"] == 2
    assert len(result.train) == result.description["train_events"] == 5
    assert result.valid.targets.values.dtype == np.int32


def test_leave_last_out_targets_never_reach_training(synthetic: Snapshot) -> None:
    result = leave_last_out(synthetic)
    full = _sequences(synthetic)
    train_rows = _rows(result.train.sequences)
    # Every training event as (user, item, position in the user's training sequence).
    train_events = {(u, item, p) for u, row in enumerate(train_rows) for p, item in enumerate(row)}
    for eval_set, from_end in ((result.valid, 2), (result.test, 1)):
        for row, user in enumerate(eval_set.users.tolist()):
            sequence = full[user]
            position = len(sequence) - from_end
            (target,) = eval_set.targets.row(row).tolist()
            assert target == sequence[position][0]
            assert (user, target, position) not in train_events
            # The history is everything before the target, in time order.
            assert eval_set.history.row(row).tolist() == [i for i, _ in sequence[:position]]
            # Nothing the model trains on happens after a target.
            assert len(train_rows[user]) == len(sequence) - 2
    # Users with fewer than 3 events only train, with all their events.
    short = [u for u, seq in full.items() if len(seq) < 3]
    assert short, "the synthetic data should have users with fewer than 3 events"
    assert not set(short) & set(result.test.users.tolist())
    assert all(train_rows[u] == [i for i, _ in full[u]] for u in short)
    # Train + valid + test targets are exactly the snapshot's events, each once.
    everything = Counter(
        zip(result.train.user_idx.tolist(), result.train.item_idx.tolist(), strict=True)
    )
    for eval_set in (result.valid, result.test):
        everything.update(
            zip(eval_set.users.tolist(), eval_set.targets.values.tolist(), strict=True)
        )
    assert everything == Counter(
        zip(synthetic.user_idx.tolist(), synthetic.item_idx.tolist(), strict=True)
    )


def test_split_rejects_unsorted_snapshots_and_unknown_protocols() -> None:
    snapshot = _snapshot(HAND_MADE, num_users=4, num_items=5)
    shuffled = _snapshot(HAND_MADE, num_users=4, num_items=5)
    shuffled.occurred_at = shuffled.occurred_at[::-1].copy()
    with pytest.raises(RecsysError, match="sorted"):
        leave_last_out(shuffled)
    with pytest.raises(RecsysError, match="sorted"):
        temporal(shuffled)
    with pytest.raises(RecsysError, match="unknown split"):
        split(snapshot, "random")  # type: ignore[arg-type]
    with pytest.raises(RecsysError, match="test_fraction"):
        temporal(snapshot, test_fraction=0.5)


# --- temporal --------------------------------------------------------------------------------

# Times 0..19 with test_fraction 0.25: test cut = int(quantile(0..19, 0.75)) = int(14.25) = 14;
# valid cut = int(quantile(0..13, 0.75)) = int(9.75) = 9. Train: t < 9; valid window 9..13;
# test window 14..19.
TIMED = [
    (1, 1, 0), (4, 1, 1), (1, 2, 2), (4, 3, 3), (1, 3, 4), (4, 2, 5), (1, 4, 6), (4, 5, 7),
    (1, 5, 8),
    (1, 2, 9),  # u1 sees item 2 again: in the history, not a target
    (1, 6, 10), (1, 6, 12),  # item 6 twice: one target
    (2, 1, 11),  # u2 has no training history: not a validation user
    (4, 6, 13),
    (1, 7, 14),
    (2, 2, 15),
    (3, 1, 16),  # u3 has no events before the test cut: never evaluated
    (1, 6, 17),  # u1 met item 6 before the test cut: not a test target
    (2, 1, 18),  # same for u2 and item 1
    (4, 7, 19),
]  # fmt: skip


def test_temporal_hand_made() -> None:
    result = temporal(_snapshot(TIMED, num_users=4, num_items=7), test_fraction=0.25)
    assert result.description["valid_cut_ms"] == 9
    assert result.description["test_cut_ms"] == 14
    assert result.train.occurred_at.max() == 8 and len(result.train) == 9
    assert result.valid.users.tolist() == [1, 4]
    assert _rows(result.valid.targets) == [[6], [6]]
    assert _rows(result.valid.history) == [[1, 2, 3, 4, 5], [1, 3, 2, 5]]
    assert result.test.users.tolist() == [1, 2, 4]
    assert _rows(result.test.targets) == [[7], [2], [7]]
    assert _rows(result.test.history) == [[1, 2, 3, 4, 5, 2, 6, 6], [1], [1, 3, 2, 5, 6]]


def _pairs(eval_set: EvalSet) -> set[tuple[int, int]]:
    lengths = eval_set.targets.lengths()
    return set(
        zip(
            np.repeat(eval_set.users, lengths).tolist(),
            eval_set.targets.values.tolist(),
            strict=True,
        )
    )


def test_temporal_targets_never_reach_training(synthetic: Snapshot) -> None:
    result = temporal(synthetic, test_fraction=0.1)
    valid_cut = int(result.description["valid_cut_ms"])  # type: ignore[call-overload]
    test_cut = int(result.description["test_cut_ms"])  # type: ignore[call-overload]
    assert valid_cut < test_cut
    assert result.train.occurred_at.max() < valid_cut
    users, items, times = synthetic.user_idx, synthetic.item_idx, synthetic.occurred_at
    train_pairs = set(
        zip(result.train.user_idx.tolist(), result.train.item_idx.tolist(), strict=True)
    )
    windows = {
        "valid": (result.valid, times < valid_cut, (times >= valid_cut) & (times < test_cut)),
        "test": (result.test, times < test_cut, times >= test_cut),
    }
    for name, (eval_set, before, window) in windows.items():
        assert len(eval_set) > 0, name
        targets = _pairs(eval_set)
        history = set(zip(users[before].tolist(), items[before].tolist(), strict=True))
        assert not targets & train_pairs, name
        assert not targets & history, name
        # Targets are exactly the window's pairs of users with history, minus seen pairs.
        has_history = {u for u, _ in history}
        expected = {
            (u, i)
            for u, i in zip(users[window].tolist(), items[window].tolist(), strict=True)
            if u in has_history and (u, i) not in history
        }
        assert targets == expected, name
        assert (eval_set.history.lengths() > 0).all(), name
        assert (eval_set.targets.lengths() > 0).all(), name
        for row, user in enumerate(eval_set.users.tolist()):
            row_items = eval_set.targets.row(row).tolist()
            assert len(row_items) == len(set(row_items))  # distinct targets
            assert eval_set.history.row(row).tolist() == items[before & (users == user)].tolist()


# --- query arrays ----------------------------------------------------------------------------


def test_left_padded_keeps_the_last_items_right_aligned() -> None:
    rows = Ragged(np.array([0, 3, 3, 8]), np.array([1, 2, 3, 4, 5, 6, 7, 8], dtype=np.int32))
    which = np.array([2, 0, 1])
    assert left_padded(rows, which, 3).tolist() == [[6, 7, 8], [1, 2, 3], [0, 0, 0]]
    assert left_padded(rows, which, 4).tolist() == [[5, 6, 7, 8], [0, 1, 2, 3], [0, 0, 0, 0]]
    assert left_padded(rows, np.array([], dtype=np.int64), 2).shape == (0, 2)


def test_split_dispatches_by_protocol(synthetic: Snapshot) -> None:
    for protocol in ("loo", "temporal"):
        result = split(synthetic, protocol)
        assert isinstance(result, Split) and result.protocol == protocol


def test_a_sample_of_users_keeps_their_rows_whole_and_the_same_users_in_valid_and_test(
    synthetic: Snapshot,
) -> None:
    full = split(synthetic, "loo")
    sampled = sample_users(full, 50, seed=3)
    assert len(sampled.valid) == len(sampled.test) == 50
    assert np.array_equal(sampled.valid.users, sampled.test.users)
    assert sampled.train is full.train
    assert sampled.description["sampled_users"] == 50
    for evals, whole in ((sampled.valid, full.valid), (sampled.test, full.test)):
        position = {int(u): r for r, u in enumerate(whole.users)}
        for r, user in enumerate(evals.users):
            w = position[int(user)]
            assert np.array_equal(evals.history.row(r), whole.history.row(w))
            assert np.array_equal(evals.targets.row(r), whole.targets.row(w))
    # Seeded: the same seed draws the same users, another seed others.
    assert np.array_equal(sample_users(full, 50, seed=3).test.users, sampled.test.users)
    assert not np.array_equal(sample_users(full, 50, seed=4).test.users, sampled.test.users)
    # A sample as large as the evaluated users is the split itself.
    assert sample_users(full, len(full.test) + 10) is full
    with pytest.raises(RecsysError, match="at least 1 user"):
        sample_users(full, 0)


def test_ragged_take_returns_the_rows_asked_for_in_that_order() -> None:
    rows = Ragged(np.array([0, 2, 2, 5], dtype=np.int64), np.array([1, 2, 3, 4, 5], np.int32))
    taken = rows.take(np.array([2, 0, 1], dtype=np.int64))
    assert [taken.row(r).tolist() for r in range(3)] == [[3, 4, 5], [1, 2], []]
