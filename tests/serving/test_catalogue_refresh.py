"""Catalogue changes reach a running scorer and the batch without a retrain: unavailable items
are never recommended, new titles, prices and genres show in responses and filters."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select

from recsys import registry
from recsys.batch import batch_recommend
from recsys.data.frames import ImportBatch, empty_users
from recsys.data.load import load_batch
from recsys.db import catalogue
from recsys.db.schema import recommendations_table
from recsys.ranking import Filters
from serving.scorer import Scorer

sys.path.insert(0, str(Path(__file__).parent))
from conftest import Home, make_home


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    return make_home(tmp_path_factory.mktemp("catalogue") / "home")


def describe(home: Home, rows: list[dict[str, Any]]) -> None:
    """Write item descriptions the way an import or a source sync does."""
    items = pd.DataFrame(rows).astype(object)
    load_batch(
        home.engine, ImportBatch(kind="test", source="test", items=items, users=empty_users())
    )


def test_an_unavailable_item_leaves_every_list_and_comes_back(home: Home) -> None:
    scorer = Scorer(home.engine)
    scorer.reload()
    assert scorer.refresh_catalogue() is False  # nothing changed since it was read
    top = scorer.recommend("u5", k=10).item_ids
    gone, renamed = top[0], top[1]
    session = scorer.model.artifact.item_ids[:3]
    similar_to = scorer.recommend_session(session, k=10).item_ids[0]
    before = catalogue.revision(home.engine)

    describe(
        home,
        [
            {"item_id": gone, "available": False},
            {"item_id": renamed, "title": "Renamed", "price": 1.5, "genres": ["Brand-New"]},
        ],
    )
    assert catalogue.revision(home.engine) > before
    assert scorer.recommend("u5", k=10).item_ids[0] == gone  # not read yet: the next poll does
    assert scorer.refresh_catalogue() is True
    assert scorer.refresh_catalogue() is False

    for user in ("u5", "u6", "never-seen-user"):  # personal and popularity lists
        assert gone not in scorer.recommend(user, k=80).item_ids
    assert gone not in scorer.recommend("u5", k=90, exclude_seen=False).item_ids
    assert gone not in scorer.recommend_session(session, k=80).item_ids
    assert gone not in scorer.similar_items(similar_to, k=80).item_ids
    first = scorer.recommend("u5", k=10).items[0]
    assert (first.item_id, first.title) == (renamed, "Renamed")
    cheap = scorer.recommend("u5", k=3, filters=Filters(max_price=2.0)).items
    assert cheap[0].item_id == renamed and cheap[0].matches_filters
    assert not cheap[1].matches_filters  # nothing else has a price: backfilled
    fresh_genre = scorer.recommend("u5", k=1, filters=Filters(include_genres=("Brand-New",)))
    assert fresh_genre.item_ids == [renamed] and fresh_genre.warnings == ()

    describe(home, [{"item_id": gone, "available": True}])
    scorer.refresh_catalogue()
    assert scorer.recommend("u5", k=10).item_ids[0] == gone


def test_the_batch_never_writes_an_unavailable_item(home: Home) -> None:
    artifact = registry.load_artifact(home.engine, registry.CHAMPION)
    batch_recommend(home.engine, artifact, k=10)
    with home.engine.connect() as conn:
        counts = pd.Series(
            conn.execute(select(recommendations_table.c.item_id)).scalars().all()
        ).value_counts()
    withdrawn = list(counts.index[:5])  # the items the batch recommends most
    describe(home, [{"item_id": i, "available": False} for i in withdrawn])
    result = batch_recommend(home.engine, artifact, k=10)
    with home.engine.connect() as conn:
        rows = conn.execute(
            select(recommendations_table.c.user_id, recommendations_table.c.item_id)
        ).all()
    assert not {item for _, item in rows} & set(withdrawn)
    per_user = pd.Series([user for user, _ in rows]).value_counts()
    assert result.users == len(per_user) and (per_user == 10).all()  # backfilled to k
    describe(home, [{"item_id": i, "available": True} for i in withdrawn])


def test_ranking_rows_skip_unavailable_columns(home: Home) -> None:
    from recsys.ranking import rank_rows

    artifact = registry.load_artifact(home.engine, registry.CHAMPION)
    history = np.zeros((2, artifact.max_len), dtype=np.int64)
    history[:, -1] = [1, 2]
    users = np.zeros(2, dtype=np.int64)
    counts = np.asarray([1, 1], dtype=np.int64)
    seen = np.asarray([1, 2], dtype=np.int64)
    columns, _, _ = rank_rows(artifact, history, users, counts, seen, 5)
    hidden = np.unique(columns[:, :2])
    again, values, _ = rank_rows(artifact, history, users, counts, seen, 5, hidden)
    assert not np.isin(again, hidden).any() and np.isfinite(values).all()
