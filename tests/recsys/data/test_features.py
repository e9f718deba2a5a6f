"""Side features: catalogue loading by external id, encodings, and train-only popularity."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from sqlalchemy import Engine

from recsys.data.catalogue import load_catalogue
from recsys.data.extract import IdMap, extract
from recsys.data.features import Catalogue, side_info
from recsys.data.frames import ImportBatch
from recsys.data.load import load_batch
from recsys.data.splits import Ragged, TrainSet, leave_last_out
from recsys.db.engine import create_engine
from recsys.db.queries import catalogue_attributes
from recsys.errors import RecsysError

USERS = pd.DataFrame(
    {
        "user_id": ["u1", "u2", "u3"],
        "age": [20, 40, None],
        "gender": ["F", "M", None],
        "occupation": ["student", "writer", "student"],
        "zip_code": ["10001", None, "94110"],
        "attributes": [None, {"plan": "gold"}, None],
    }
)
ITEMS = pd.DataFrame(
    {
        "item_id": ["a", "b", "c"],
        "title": ["A", "B", None],
        "genres": [["Comedy", "Drama"], ["Drama"], None],
        "year": [1990, 2000, None],
        "price": [None, 9.0, 99.0],
        "attributes": [None, None, {"brand": "x"}],
    }
)
# u1 and u2 have 3 events each: leave-last-out trains on their first; u3 only trains.
EVENTS = [
    ("u1", "a", 1_000),
    ("u1", "b", 2_000),
    ("u1", "c", 3_000),
    ("u2", "a", 1_000),
    ("u2", "c", 2_000),
    ("u2", "b", 3_000),
    ("u3", "a", 1_000),
]


def _batch() -> ImportBatch:
    frame = pd.DataFrame(EVENTS, columns=["user_id", "item_id", "occurred_at"])
    frame = frame.astype({"user_id": object, "item_id": object})
    frame["event_type"] = "view"
    frame["value"] = np.nan
    frame["occurred_at"] = frame["occurred_at"].astype(np.int64)
    return ImportBatch(
        kind="t", source="t", interactions=frame, users=USERS, items=ITEMS, rows_read=len(frame)
    )


def test_catalogue_attributes_follow_the_id_map_order(engine: Engine) -> None:
    load_batch(engine, _batch())
    users = IdMap.from_ids(["u3", "nobody", "u1"])
    items = IdMap.from_ids(["c", "a"])
    got = catalogue_attributes(engine, users, items)
    assert got["users"]["age"] == [None, None, 20]
    assert got["users"]["gender"] == [None, None, "F"]
    assert got["users"]["occupation"] == ["student", None, "student"]
    assert got["users"]["zip_code"] == ["94110", None, "10001"]
    assert got["items"]["genres"] == [None, ["Comedy", "Drama"]]
    assert got["items"]["year"] == [None, 1990]
    assert got["items"]["price"] == [99.0, None]
    assert got["items"]["attributes"] == [{"brand": "x"}, None]


def test_side_info_from_the_database_encodes_each_attribute(
    engine: Engine, database_url: str
) -> None:
    load_batch(engine, _batch())
    snapshot = extract(create_engine(database_url))
    split = leave_last_out(snapshot)
    catalogue = load_catalogue(engine, snapshot.users, snapshot.items)
    side = side_info(catalogue, split.train, split.num_users, split.num_items)

    assert snapshot.users.to_list() == ["u1", "u2", "u3"]
    assert snapshot.items.to_list() == ["a", "b", "c"]
    users = dict(zip(side.user_feature_names, side.user_features.T.tolist(), strict=True))
    items = dict(zip(side.item_feature_names, side.item_features.T.tolist(), strict=True))
    assert side.user_features.shape == (4, len(side.user_feature_names))
    assert side.item_features.shape == (4, len(side.item_feature_names))
    assert side.user_features.dtype == torch.float32
    assert not side.user_features[0].any() and not side.item_features[0].any()  # padding

    assert users["age"] == [0.0, -1.0, 1.0, 0.0]  # 20, 40 standardised; missing -> mean
    assert users["age_missing"] == [0.0, 0.0, 0.0, 1.0]
    assert users["gender=f"] == [0.0, 1.0, 0.0, 0.0]
    assert users["gender=m"] == [0.0, 0.0, 1.0, 0.0]
    assert users["occupation=student"] == [0.0, 1.0, 0.0, 1.0]
    assert users["occupation=other"] == [0.0] * 4
    assert items["genre=Drama"] == [0.0, 1.0, 1.0, 0.0]
    assert items["genre=Comedy"] == [0.0, 1.0, 0.0, 0.0]
    assert items["year"] == [0.0, -1.0, 1.0, 0.0]
    assert items["year_missing"] == [0.0, 0.0, 0.0, 1.0]
    assert items["log_price_missing"] == [0.0, 1.0, 0.0, 0.0]
    assert items["log_price"] == [0.0, 0.0, -1.0, 1.0]
    # Training events: a x3 (u1, u2, u3), b x0, c x0; b and c are only held-out targets.
    assert items["log_popularity"][2] == items["log_popularity"][3]
    assert items["log_popularity"][1] > 0 > items["log_popularity"][2]


def _train(items: list[int], num_users: int = 1) -> TrainSet:
    users = np.ones(len(items), dtype=np.int32)
    values = np.array(items, dtype=np.int32)
    times = np.arange(len(items), dtype=np.int64)
    return TrainSet(users, values, times, Ragged.from_groups(users, values, num_users + 1))


def _catalogue(num_users: int, num_items: int) -> Catalogue:
    return Catalogue(
        user_age=[None] * num_users,
        user_gender=[None] * num_users,
        user_occupation=[None] * num_users,
        item_genres=[[] for _ in range(num_items)],
        item_year=[None] * num_items,
        item_price=[None] * num_items,
    )


def test_side_info_popularity_is_standardised_log_training_counts() -> None:
    train = _train([1, 1, 1, 2, 4, 4])
    side = side_info(_catalogue(1, 4), train, num_users=1, num_items=4)
    column = side.item_feature_names.index("log_popularity")
    logs = np.log1p([3.0, 1.0, 0.0, 2.0])
    expected = (logs - logs.mean()) / logs.std()
    np.testing.assert_allclose(side.item_features[1:, column].numpy(), expected, rtol=1e-6)


def test_side_info_keeps_the_most_frequent_labels_and_an_other_column() -> None:
    num_users, num_items = 50, 40
    catalogue = _catalogue(num_users, num_items)
    # Occupation k is held by 25 - k users (k < 25): 25 labels, the 20 most frequent kept.
    occupations = [f"job{k:02d}" for k in range(25) for _ in range(25 - k)][:num_users]
    catalogue.user_occupation[:] = occupations
    # Item r has genre g{r} (each once) and "common" (all): "common" ranks first.
    for r in range(num_items):
        catalogue.item_genres[r] = ["common", f"g{r:02d}"]
    side = side_info(catalogue, _train([1]), num_users, num_items)

    occupation_names = [n for n in side.user_feature_names if n.startswith("occupation=")]
    kept = sorted(set(occupations), key=lambda o: (-occupations.count(o), o))
    assert occupation_names == [f"occupation={o}" for o in kept[:20]] + ["occupation=other"]
    genre_names = [n for n in side.item_feature_names if n.startswith("genre=")]
    assert len(genre_names) == 31 and genre_names[0] == "genre=common"
    assert genre_names[-1] == "genre=other"
    other = side.item_feature_names.index("genre=other")
    # Ties broken by name: g00..g28 kept, g29..g39 fall into "other".
    assert side.item_features[1:, other].tolist() == [0.0] * 29 + [1.0] * 11
    assert side.item_features[1:, side.item_feature_names.index("genre=common")].all()


def test_side_info_accepts_the_query_output_and_checks_sizes() -> None:
    attributes = {
        "users": {"age": [30], "gender": ["x"], "occupation": [None]},
        "items": {"genres": [["A"]], "year": [2001], "price": [math.nan]},
    }
    side = side_info(attributes, _train([1]), num_users=1, num_items=1)
    assert side.item_features[1, side.item_feature_names.index("log_price_missing")] == 1.0
    with pytest.raises(RecsysError, match="1 users and 1 items"):
        side_info(attributes, _train([1]), num_users=2, num_items=1)
