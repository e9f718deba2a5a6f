"""Evaluation protocols as data splits: leave-last-out (``loo``) and a global time cut.

A split holds the training events and two :class:`EvalSet` s (validation, test). An eval set
gives, per evaluated user, the history the model may read (everything before the targets, in
time order) and the target items. No target of validation or test is ever a training event,
except in a refit's split (:func:`with_every_event`), which nothing is measured on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

from recsys.data.extract import Snapshot
from recsys.errors import RecsysError

Protocol = Literal["loo", "temporal"]
PROTOCOLS: tuple[Protocol, ...] = ("loo", "temporal")

Int32Array = npt.NDArray[np.int32]
Int64Array = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Ragged:
    """Variable-length int rows in CSR form: row ``r`` is ``values[offsets[r]:offsets[r+1]]``."""

    offsets: Int64Array  # (R + 1,)
    values: Int32Array

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row(self, r: int) -> Int32Array:
        return self.values[self.offsets[r] : self.offsets[r + 1]]

    def lengths(self) -> Int64Array:
        return np.diff(self.offsets)

    def take(self, which: Int64Array) -> Ragged:
        """Rows ``which``, in that order, as a new :class:`Ragged`."""
        counts = self.offsets[which + 1] - self.offsets[which]
        offsets = np.zeros(len(which) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        within = np.arange(int(offsets[-1])) - np.repeat(offsets[:-1], counts)
        return Ragged(offsets, self.values[np.repeat(self.offsets[which], counts) + within])

    @classmethod
    def from_groups(cls, group: Int32Array, values: Int32Array, num_groups: int) -> Ragged:
        """Rows by ``group`` id 0..num_groups-1; ``group`` must be sorted (stable order kept)."""
        counts = np.bincount(group, minlength=num_groups)
        offsets = np.zeros(num_groups + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return cls(offsets, values.astype(np.int32, copy=False))


@dataclass(frozen=True)
class EvalSet:
    """Users to evaluate, each with the history the model reads and the targets to find."""

    users: Int32Array  # (U,) user indices
    history: Ragged  # U rows, time order, all of each user's events before the targets
    targets: Ragged  # U rows of target item indices

    def __len__(self) -> int:
        return len(self.users)


@dataclass(frozen=True)
class TrainSet:
    """Training events sorted by (user, time), plus each user's training sequence."""

    user_idx: Int32Array
    item_idx: Int32Array
    occurred_at: Int64Array
    sequences: Ragged  # num_users + 1 rows (row 0 empty), time order

    def __len__(self) -> int:
        return len(self.user_idx)


@dataclass(frozen=True)
class Split:
    protocol: Protocol
    num_users: int
    num_items: int
    train: TrainSet
    valid: EvalSet
    test: EvalSet
    description: dict[str, object]


def split(snapshot: Snapshot, protocol: Protocol, *, test_fraction: float = 0.1) -> Split:
    """Split a snapshot by ``protocol``; ``test_fraction`` sets the temporal cuts."""
    if protocol == "loo":
        return leave_last_out(snapshot)
    if protocol == "temporal":
        return temporal(snapshot, test_fraction=test_fraction)
    raise RecsysError(f"unknown split {protocol!r}: use one of {', '.join(PROTOCOLS)}")


def sample_users(data: Split, max_users: int, *, seed: int = 0) -> Split:
    """``data`` with validation and test cut to at most ``max_users`` users drawn at random.

    The training events are untouched; validation and test keep the same sampled users where
    both hold them (leave-last-out evaluates the same users in both), so a model selected on
    the sampled validation users is tested on the same people. The draw is seeded: the same
    split and seed give the same users, which is what the promotion gate's paired comparison
    needs. Metrics then carry the wider confidence intervals of the smaller sample.
    """
    if max_users < 1:
        raise RecsysError(f"the evaluation sample needs at least 1 user, got {max_users}")
    everyone = np.union1d(data.valid.users, data.test.users)
    if len(everyone) <= max_users:
        return data
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(everyone, size=max_users, replace=False))
    description = {**data.description, "sampled_users": max_users, "sample_seed": seed}
    return replace(
        data,
        valid=_subset(data.valid, chosen),
        test=_subset(data.test, chosen),
        description=description,
    )


def with_every_event(data: Split, snapshot: Snapshot) -> Split:
    """``data`` with every event of ``snapshot`` (the one it was split from) in training.

    For a refit (:func:`recsys.experiment.refit`): the held-out validation and test targets
    train too, so nothing is left to measure on. ``valid`` and ``test`` stay as they were,
    for the export's parity and index checks, which compare graphs and never score quality.
    """
    if snapshot.num_users != data.num_users or snapshot.num_items != data.num_items:
        raise RecsysError("with_every_event needs the snapshot the split was made from")
    _check_order(snapshot)
    train = _train_set(
        snapshot.user_idx, snapshot.item_idx, snapshot.occurred_at, snapshot.num_users
    )
    description = {**data.description, "refit": True, "train_events": len(snapshot.user_idx)}
    return replace(data, train=train, description=description)


def _subset(evals: EvalSet, users: Int32Array) -> EvalSet:
    """The rows of ``evals`` whose user is in the sorted ``users``, in their order."""
    rows = np.flatnonzero(np.isin(evals.users, users))
    return EvalSet(evals.users[rows], evals.history.take(rows), evals.targets.take(rows))


def left_padded(rows: Ragged, which: npt.NDArray[np.int64], length: int) -> npt.NDArray[np.int64]:
    """The last ``length`` values of each chosen row, right-aligned, 0 on the left. (R, L)"""
    which = np.asarray(which, dtype=np.int64)
    out = np.zeros((len(which), length), dtype=np.int64)
    ends = rows.offsets[which + 1]
    take = np.minimum(ends - rows.offsets[which], length)
    # Flat (row, column, source) of every copied value; ``within`` counts 0..take-1 per row.
    row = np.repeat(np.arange(len(which)), take)
    within = np.arange(len(row)) - np.repeat(np.cumsum(take) - take, take)
    column = length - np.repeat(take, take) + within
    out[row, column] = rows.values[np.repeat(ends - take, take) + within]
    return out


def eval_query_arrays(
    eval_set: EvalSet, which: npt.NDArray[np.int64], max_len: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Histories (R, L) left-padded and user indices (R,) for rows ``which`` of an eval set."""
    history = left_padded(eval_set.history, which, max_len)
    return history, eval_set.users[which].astype(np.int64)


def _check_order(snapshot: Snapshot) -> None:
    """Splits read positions as time order: events must be sorted by (user, time)."""
    users, times = snapshot.user_idx, snapshot.occurred_at
    same_user = users[1:] == users[:-1]
    if (users[1:] < users[:-1]).any() or (same_user & (times[1:] < times[:-1])).any():
        raise RecsysError("snapshot events must be sorted by (user, time) before splitting")


def _train_set(users: Int32Array, items: Int32Array, times: Int64Array, num_users: int) -> TrainSet:
    return TrainSet(users, items, times, Ragged.from_groups(users, items, num_users + 1))


def leave_last_out(snapshot: Snapshot) -> Split:
    """Per user in time order: last event = test target, the one before = validation target.

    Users with fewer than 3 events only train.
    """
    _check_order(snapshot)
    users, items, times = snapshot.user_idx, snapshot.item_idx, snapshot.occurred_at
    n = len(users)
    counts = np.bincount(users, minlength=snapshot.num_users + 1)
    # Position of each event from the end of its user's sequence (0 = last).
    ends = np.cumsum(counts)[users]
    from_end = ends - 1 - np.arange(n)
    evaluated = counts[users] >= 3
    is_test = evaluated & (from_end == 0)
    is_valid = evaluated & (from_end == 1)
    train = ~(is_test | is_valid)

    train_set = _train_set(users[train], items[train], times[train], snapshot.num_users)
    eval_users = np.flatnonzero(counts >= 3).astype(np.int32)
    valid_history = _histories(eval_users, users, items, train)
    test_history = _histories(eval_users, users, items, train | is_valid)
    one = np.arange(len(eval_users) + 1, dtype=np.int64)
    valid = EvalSet(eval_users, valid_history, Ragged(one, items[is_valid].astype(np.int32)))
    test = EvalSet(eval_users, test_history, Ragged(one.copy(), items[is_test].astype(np.int32)))
    return Split(
        protocol="loo",
        num_users=snapshot.num_users,
        num_items=snapshot.num_items,
        train=train_set,
        valid=valid,
        test=test,
        description={
            "protocol": "loo",
            "train_events": int(train.sum()),
            "evaluated_users": len(eval_users),
            "train_only_users": int(((counts > 0) & (counts < 3)).sum()),
        },
    )


def _histories(
    eval_users: Int32Array, users: Int32Array, items: Int32Array, keep: npt.NDArray[np.bool_]
) -> Ragged:
    """For each evaluated user, their kept events in time order (events sorted by user)."""
    wanted = np.zeros(int(users.max(initial=0)) + 1, dtype=bool)
    wanted[eval_users] = True
    mask = keep & wanted[users]
    # Row r belongs to eval_users[r]; events are grouped by user in increasing user order.
    rank = np.full(len(wanted), -1, dtype=np.int64)
    rank[eval_users] = np.arange(len(eval_users))
    return Ragged.from_groups(rank[users[mask]].astype(np.int32), items[mask], len(eval_users))


def temporal(snapshot: Snapshot, *, test_fraction: float = 0.1) -> Split:
    """One global cut at the (1 - f) time quantile; validation is cut the same way inside train.

    Targets are the distinct items a user met after the cut that were not in their history;
    only users with history before the cut are evaluated. The model trains on events before
    the validation cut; test histories run up to the test cut.
    """
    if not 0.0 < test_fraction < 0.5:
        raise RecsysError(f"test_fraction must be in (0, 0.5), got {test_fraction}")
    _check_order(snapshot)
    users, items, times = snapshot.user_idx, snapshot.item_idx, snapshot.occurred_at
    if len(times) == 0:
        raise RecsysError("cannot split an empty snapshot")
    test_cut = int(np.quantile(times, 1.0 - test_fraction))
    before_test = times < test_cut
    valid_cut = (
        int(np.quantile(times[before_test], 1.0 - test_fraction)) if before_test.any() else test_cut
    )
    train = times < valid_cut
    valid_window = (times >= valid_cut) & before_test
    test_window = ~before_test

    valid = _window_eval(users, items, history=train, window=valid_window)
    test = _window_eval(users, items, history=before_test, window=test_window)
    return Split(
        protocol="temporal",
        num_users=snapshot.num_users,
        num_items=snapshot.num_items,
        train=_train_set(users[train], items[train], times[train], snapshot.num_users),
        valid=valid,
        test=test,
        description={
            "protocol": "temporal",
            "valid_cut_ms": valid_cut,
            "test_cut_ms": test_cut,
            "train_events": int(train.sum()),
            "valid_users": len(valid),
            "test_users": len(test),
        },
    )


def _window_eval(
    users: Int32Array,
    items: Int32Array,
    *,
    history: npt.NDArray[np.bool_],
    window: npt.NDArray[np.bool_],
) -> EvalSet:
    size = int(users.max(initial=0)) + 1
    has_history = np.bincount(users[history], minlength=size) > 0
    # Distinct (user, item) pairs in the window that the user's history does not hold, as
    # sorted int64 keys user * stride + item.
    stride = int(items.max(initial=0)) + 1
    key = users.astype(np.int64) * stride + items
    pairs = np.unique(key[window & has_history[users]])
    pairs = pairs[~np.isin(pairs, key[history])]
    target_users = (pairs // stride).astype(np.int32)
    target_items = (pairs % stride).astype(np.int32)
    eval_users = np.unique(target_users).astype(np.int32)
    rank = np.full(size, -1, dtype=np.int64)
    rank[eval_users] = np.arange(len(eval_users))
    targets = Ragged.from_groups(rank[target_users].astype(np.int32), target_items, len(eval_users))
    return EvalSet(eval_users, _histories(eval_users, users, items, history), targets)
