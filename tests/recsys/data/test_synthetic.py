"""Synthetic generator: reproducible, exact, well-formed, long-tailed and sequentially learnable."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.data.frames import INTERACTION_COLUMNS, ITEM_COLUMNS, USER_COLUMNS
from recsys.data.synthetic import SyntheticConfig, generate, validate
from recsys.errors import RecsysError

SMALL = SyntheticConfig(num_users=300, num_items=120, num_interactions=4000, seed=3)


def _hit_rates_at_10(interactions: pd.DataFrame) -> tuple[float, float]:
    """HR@10 of popularity and of the most frequent successor of the previous item.

    Each user's last item is held out; both predictors see only the rest and exclude the
    user's training items. The successor ranking breaks ties (and pads) by popularity.
    """
    frame = interactions.sort_values(["user_id", "occurred_at"], kind="stable")
    user = pd.factorize(frame["user_id"])[0]
    item_codes, item_uniques = pd.factorize(frame["item_id"])
    item = item_codes.astype(np.int64)
    num_users, num_items = int(user.max()) + 1, len(item_uniques)

    is_last = np.append(user[1:] != user[:-1], True)
    has_previous = np.insert(user[1:] == user[:-1], 0, False)
    test = np.flatnonzero(is_last & has_previous)
    target, previous, test_user = item[test], item[test - 1], user[test]

    train = ~is_last
    popularity = np.bincount(item[train], minlength=num_items).astype(np.float64)
    pair = train[:-1] & train[1:] & (user[:-1] == user[1:])
    successors = np.zeros((num_items, num_items))
    np.add.at(successors, (item[:-1][pair], item[1:][pair]), 1.0)
    seen = np.zeros((num_users, num_items), dtype=bool)
    seen[user[train], item[train]] = True

    def hit_rate(scores: np.ndarray) -> float:
        scores = np.where(seen[test_user], -np.inf, scores)
        top = np.argpartition(-scores, 10, axis=1)[:, :10]  # (T, 10)
        return float((top == target[:, None]).any(axis=1).mean())

    by_popularity = np.broadcast_to(popularity, (test.size, num_items))
    by_successor = successors[previous] * (popularity.sum() + 1.0) + popularity
    return hit_rate(by_popularity), hit_rate(by_successor)


def test_generate_is_reproducible() -> None:
    first, second = generate(SMALL), generate(SMALL)
    pd.testing.assert_frame_equal(first.interactions, second.interactions)
    pd.testing.assert_frame_equal(first.items, second.items)
    pd.testing.assert_frame_equal(first.users, second.users)
    other = generate(SyntheticConfig(num_users=300, num_items=120, num_interactions=4000, seed=4))
    assert not first.interactions["item_id"].equals(other.interactions["item_id"])


def test_generate_frames_have_canonical_columns_and_dtypes() -> None:
    batch = generate(SMALL)
    assert (batch.kind, batch.source) == ("synthetic", "synthetic")
    assert batch.rows_read == SMALL.num_interactions and batch.rejects == []
    assert tuple(batch.interactions.columns) == INTERACTION_COLUMNS
    assert tuple(batch.items.columns) == ITEM_COLUMNS
    assert tuple(batch.users.columns) == USER_COLUMNS
    dtypes = batch.interactions.dtypes
    for column in ("user_id", "item_id", "event_type"):
        assert dtypes[column] == np.dtype(object)
        assert all(isinstance(v, str) for v in batch.interactions[column])
    assert dtypes["value"] == np.float64 and dtypes["occurred_at"] == np.int64

    items, users = batch.items, batch.users
    assert len(items) == SMALL.num_items and items["item_id"].is_unique
    assert set(batch.interactions["item_id"]) <= set(items["item_id"])
    assert items["year"].between(1980, 2024).all() and (items["price"] > 0).all()
    assert all(1 <= len(g) <= 2 and all(isinstance(x, str) for x in g) for g in items["genres"])
    assert (items["genres"].map(len) == 2).any()
    assert len(users) == SMALL.num_users and users["user_id"].is_unique
    assert set(batch.interactions["user_id"]) == set(users["user_id"])
    assert users["age"].between(18, 75).all()
    assert set(users["gender"]) <= {"F", "M", "X"}
    assert users["zip_code"].str.fullmatch(r"\d{5}").all()


def test_generate_events_and_purchase_values() -> None:
    batch = generate(SyntheticConfig(num_users=500, num_items=200, num_interactions=20_000))
    frame = batch.interactions
    shares = frame["event_type"].value_counts(normalize=True)
    assert set(shares.index) == {"view", "click", "purchase"}
    assert 0.65 < shares["view"] < 0.75 and 0.07 < shares["purchase"] < 0.13
    purchase = frame["event_type"] == "purchase"
    assert frame.loc[~purchase, "value"].isna().all()
    price = batch.items.set_index("item_id")["price"]
    expected = frame.loc[purchase, "item_id"].map(price).to_numpy()
    np.testing.assert_array_equal(frame.loc[purchase, "value"].to_numpy(), expected)


@pytest.mark.parametrize(
    ("num_users", "num_items", "num_interactions"),
    [(300, 120, 4000), (50, 10, 50), (40, 11, 200), (1000, 400, 30_000)],
)
def test_generate_exact_count_without_repeated_pairs(
    num_users: int, num_items: int, num_interactions: int
) -> None:
    config = SyntheticConfig(num_users, num_items, num_interactions, seed=1)
    frame = generate(config).interactions
    assert len(frame) == num_interactions
    assert not frame.duplicated(["user_id", "item_id"]).any()
    per_user = frame.groupby("user_id").size()
    assert len(per_user) == num_users
    assert per_user.min() >= 1 and per_user.max() <= num_items // 2


def test_generate_lengths_are_long_tailed() -> None:
    frame = generate(SyntheticConfig(2000, 500, 40_000)).interactions
    per_user = frame.groupby("user_id").size()
    assert per_user.max() > 4 * per_user.median()


def test_generate_timestamps_strictly_increase_per_user_inside_window() -> None:
    config = SyntheticConfig(num_users=400, num_items=300, num_interactions=30_000, days=30)
    frame = generate(config).interactions
    same_user = frame["user_id"].to_numpy()[1:] == frame["user_id"].to_numpy()[:-1]
    step = np.diff(frame["occurred_at"].to_numpy())
    assert (step[same_user] > 0).all()
    start = pd.Timestamp("2024-01-01", tz="UTC")
    times = pd.to_datetime(frame["occurred_at"], unit="ms", utc=True)
    assert times.min() >= start and times.max() <= start + pd.Timedelta(days=30)
    assert times.max() - times.min() > pd.Timedelta(days=20)


def test_generate_popularity_is_long_tailed() -> None:
    frame = generate(SyntheticConfig(2000, 2000, 40_000)).interactions
    counts = frame["item_id"].value_counts().to_numpy()
    assert counts[:200].sum() / counts.sum() > 0.4


def test_generate_demographics_follow_taste() -> None:
    batch = generate(SyntheticConfig(2000, 500, 40_000))
    genre = batch.items.set_index("item_id")["genres"].str[0]
    frame = batch.interactions.assign(genre=batch.interactions["item_id"].map(genre))
    favourite = frame.groupby("user_id")["genre"].agg(lambda g: g.mode().iloc[0])
    age = batch.users.set_index("user_id")["age"]
    mean_age = age.groupby(favourite.reindex(age.index)).mean()
    assert mean_age.max() - mean_age.min() > 20


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_users": 0}, "num_users must be positive"),
        ({"num_items": -5}, "num_items must be positive"),
        ({"num_interactions": 0}, "num_interactions must be positive"),
        ({"num_items": 9}, "num_items must be at least 10"),
        ({"num_interactions": 99}, "must be at least num_users"),
        ({"num_interactions": 100 * 25 + 1}, "exceeds num_users"),
        ({"num_clusters": 0}, "num_clusters must be positive"),
        ({"num_clusters": 51}, "num_clusters"),
        ({"sequential_prob": 1.5}, "sequential_prob"),
        ({"days": 0}, "days must be positive"),
        ({"start": "not a date"}, "start must be a date"),
    ],
)
def test_validate_rejects_bad_arguments(changes: dict[str, object], message: str) -> None:
    base = {"num_users": 100, "num_items": 50, "num_interactions": 1000}
    config = SyntheticConfig(**{**base, **changes})  # type: ignore[arg-type]
    with pytest.raises(RecsysError, match=message):
        validate(config)
    with pytest.raises(RecsysError):
        generate(config)


def test_generate_many_clusters_reuse_genre_names() -> None:
    config = SyntheticConfig(num_users=50, num_items=40, num_interactions=300, num_clusters=25)
    names = {g for genres in generate(config).items["genres"] for g in genres}
    assert len(names) == 25 and "Action 2" in names and "Action 3" in names


def test_generate_successor_habit_beats_popularity() -> None:
    frame = generate(SyntheticConfig(2000, 500, 40_000, seed=7)).interactions
    popularity, successor = _hit_rates_at_10(frame)
    assert successor >= 1.5 * popularity


def test_generate_without_sequential_habit_has_little_successor_lift() -> None:
    # Co-occurrence inside taste clusters still gives a small lift; the habit gives ~4x.
    config = SyntheticConfig(2000, 500, 40_000, seed=7, sequential_prob=0.0)
    popularity, successor = _hit_rates_at_10(generate(config).interactions)
    assert successor < 2.0 * popularity
