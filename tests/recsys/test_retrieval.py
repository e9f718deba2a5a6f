"""Ranking through the item index: a SASRec artifact with its encoder and index against exact
ranking of the same artifact, under every rule (seen, excluded and unavailable items, soft
filters with backfill, the popularity fallback, explanations), for requests and the batch."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine

from recsys import ranking, retrieval
from recsys.ann import MIN_RECALL, IndexParams, ItemIndex, recall
from recsys.artifacts import RETRIEVAL_FILES, Artifact
from recsys.catalogue import Catalogue
from recsys.data.ingest import ingest
from recsys.data.splits import left_padded
from recsys.data.synthetic import SyntheticConfig, generate
from recsys.db.engine import create_engine
from recsys.db.migrate import upgrade
from recsys.experiment import Outcome, train_and_evaluate
from recsys.export import ExportedArtifact, write_artifact
from recsys.models.sasrec import SASRecConfig
from recsys.ranking import Filters, Ranking, Request


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Engine, Outcome]:
    folder = tmp_path_factory.mktemp("retrieval")
    url = f"sqlite:///{folder / 'recsys.db'}"
    upgrade(create_engine(url))
    engine = create_engine(url)
    batch = generate(SyntheticConfig(num_users=200, num_items=90, num_interactions=6000, seed=3))
    ingest(engine, batch, folder / "rejects")
    outcome = train_and_evaluate(
        engine,
        "sasrec",
        "loo",
        model_config=SASRecConfig(embedding_dim=32, max_len=20),
        train_overrides={"max_epochs": 3, "threads": 1, "progress": False},
    )
    return engine, outcome


@pytest.fixture(scope="module")
def exported(
    world: tuple[Engine, Outcome], tmp_path_factory: pytest.TempPathFactory
) -> ExportedArtifact:
    folder = tmp_path_factory.mktemp("indexed") / "v1"
    return write_artifact(world[1], folder, version=1, code_version="test", ann_min_items=1)


@pytest.fixture(scope="module")
def indexed(exported: ExportedArtifact) -> Artifact:
    return Artifact.load(exported.folder)


@pytest.fixture(scope="module")
def catalogue(world: tuple[Engine, Outcome], indexed: Artifact) -> Catalogue:
    return Catalogue.load(world[0], indexed.item_ids)


def histories_of(outcome: Outcome, artifact: Artifact) -> list[list[str]]:
    """Every test user's history as item ids, oldest first."""
    test = outcome.split.test
    rows = np.arange(len(test), dtype=np.int64)
    padded = left_padded(test.history, rows, int(test.history.lengths().max()))
    return [[artifact.item_ids[i - 1] for i in row if i > 0] for row in padded.tolist()]


def exact(
    artifact: Artifact, requests: list[Request], catalogue: Catalogue | None
) -> list[Ranking]:
    """The same artifact ranked over every item by its scoring graph (never the index)."""
    return ranking.recommend_many(artifact, requests, catalogue=catalogue)


def test_retrieval_artifact_carries_its_encoder_and_a_checked_index(
    exported: ExportedArtifact, indexed: Artifact, world: tuple[Engine, Outcome]
) -> None:
    assert set(RETRIEVAL_FILES) <= set(indexed.files)
    assert all(indexed.manifest_sha256(name) for name in RETRIEVAL_FILES)
    # Registration keeps the 9 cells and may search more than the 8 it starts from, until
    # the validation users' top 10 is found.
    built = IndexParams.for_items(90).to_dict()
    assert {**indexed.retrieval, "probes": built["probes"]} == built
    assert built["probes"] <= indexed.retrieval["probes"] <= built["lists"]
    check = exported.retrieval
    assert check is not None and check.passed, check
    assert check.max_abs_diff is not None and check.max_abs_diff <= check.atol
    assert check.recall_at_10 is not None and check.recall_at_10 >= MIN_RECALL
    assert check.users == int((world[1].split.test.history.lengths() > 0).sum())
    assert "recall@10" in (exported.folder / "report.md").read_text()
    vectors = indexed.encode(np.asarray([[0, 3, 5]], dtype=np.int64))
    assert vectors.shape == (1, 32) and indexed.output_vectors.shape == (90, 32)


def test_retrieval_top10_of_the_test_users_is_exact_ranking_with_seen_items_excluded(
    indexed: Artifact, world: tuple[Engine, Outcome]
) -> None:
    histories = histories_of(world[1], indexed)
    requests = [Request(history, k=10) for history in histories]
    through_index = retrieval.recommend_many(indexed, requests)
    expected = exact(indexed, requests, None)
    found = np.asarray([r.item_ids for r in through_index])
    truth = np.asarray([r.item_ids for r in expected])
    assert recall(found, truth) >= MIN_RECALL
    for history, ranked, scored in zip(histories, through_index, expected, strict=True):
        assert len(ranked.items) == 10 and not set(ranked.item_ids) & set(history)
        assert ranked.fallback is None and ranked.model_family == "sasrec"
        assert ranked.scores == sorted(ranked.scores, reverse=True)
        same = set(ranked.item_ids) & set(scored.item_ids)
        mine, theirs = (
            dict(zip(ranked.item_ids, ranked.scores, strict=True)),
            dict(zip(scored.item_ids, scored.scores, strict=True)),
        )
        assert all(mine[i] == pytest.approx(theirs[i], abs=1e-4) for i in same)


def test_retrieval_keeps_unavailable_excluded_and_filtered_items_out(
    indexed: Artifact, catalogue: Catalogue, world: tuple[Engine, Outcome]
) -> None:
    history = histories_of(world[1], indexed)[4]
    best = exact(indexed, [Request(history, k=10)], catalogue)[0].item_ids
    gone = [indexed.item_index[i] - 1 for i in best[:3]]
    shelf = dataclasses.replace(catalogue, unavailable=np.asarray(sorted(gone), dtype=np.int64))
    cases = [
        Filters(),
        Filters(exclude_items=tuple(best[3:6])),
        Filters(include_genres=("Drama",)),
        Filters(include_genres=("Drama",), exclude_items=(best[6],)),
    ]
    for filters in cases:
        request = Request(history, k=10, filters=filters, explain=True)
        (ranked,) = retrieval.recommend_many(indexed, [request], catalogue=shelf)
        (expected,) = exact(indexed, [request], shelf)
        ids = ranked.item_ids
        assert len(ids) == 10
        assert not set(ids) & (set(best[:3]) | set(filters.exclude_items) | set(history))
        if filters.include_genres:
            drama = shelf.genres["Drama"]
            passing = [drama[indexed.item_index[i] - 1] for i in ids]
            assert passing == [item.matches_filters for item in ranked.items]
        assert ids == expected.item_ids, filters  # this index probes every cell: exact
        assert ranked.backfilled == expected.backfilled
        assert [item.because for item in ranked.items] == [item.because for item in expected.items]


def test_retrieval_a_weak_index_still_gives_full_lists_by_the_rules(
    exported: ExportedArtifact, catalogue: Catalogue, world: tuple[Engine, Outcome]
) -> None:
    """With one of 30 cells probed the index finds a few items only: the lists ask again for
    more, then rank over every item vector, and come out as exact ranking's."""
    weak = Artifact.load(exported.folder)
    weak.__dict__["index"] = ItemIndex.build(
        weak.output_vectors, IndexParams(lists=30, probes=1), threads=1
    )
    histories = histories_of(world[1], weak)[:20]
    for filters in (Filters(), Filters(include_genres=("Drama",)), Filters(min_year=3000)):
        requests = [Request(h, k=10, filters=filters) for h in histories]
        through_index = retrieval.recommend_many(weak, requests, catalogue=catalogue)
        expected = exact(weak, requests, catalogue)
        for ranked, scored in zip(through_index, expected, strict=True):
            assert ranked.item_ids == scored.item_ids
            assert ranked.backfilled == scored.backfilled
            assert ranked.scores == pytest.approx(scored.scores, abs=1e-4)


def test_retrieval_answers_from_the_index(
    exported: ExportedArtifact, world: tuple[Engine, Outcome]
) -> None:
    """An index over shuffled vectors points at the wrong items: the lists change, so they
    come from the index, not from scoring every item."""
    shuffled = Artifact.load(exported.folder)
    vectors = np.asarray(shuffled.output_vectors)
    order = np.random.default_rng(0).permutation(len(vectors))
    shuffled.__dict__["index"] = ItemIndex.build(
        np.ascontiguousarray(vectors[order]), IndexParams.for_items(len(vectors)), threads=1
    )
    requests = [Request(h, k=10) for h in histories_of(world[1], shuffled)[:30]]
    found = np.asarray([r.item_ids for r in retrieval.recommend_many(shuffled, requests)])
    truth = np.asarray([r.item_ids for r in exact(shuffled, requests, None)])
    assert recall(found, truth) < 0.5


def test_retrieval_histories_the_model_cannot_read_get_the_popularity(
    indexed: Artifact, catalogue: Catalogue
) -> None:
    for filters in (Filters(), Filters(exclude_genres=("Drama",))):
        request = Request(["unknown-1", "unknown-2"], user_id="stranger", k=20, filters=filters)
        (ranked,) = retrieval.recommend_many(indexed, [request], catalogue=catalogue)
        (expected,) = exact(indexed, [request], catalogue)
        assert ranked.fallback == "popular" and ranked.unknown_items == ("unknown-1", "unknown-2")
        assert ranked.item_ids == expected.item_ids
        assert ranked.scores == expected.scores


def test_retrieval_scores_of_chosen_items_are_the_graphs(
    indexed: Artifact, world: tuple[Engine, Outcome]
) -> None:
    history = histories_of(world[1], indexed)[0]
    asked = [*indexed.item_ids[:5], "nope"]
    mine = retrieval.score_items(indexed, history, asked, user_id="u")
    theirs = ranking.score_items(indexed, history, asked, user_id="u")
    assert mine.unknown_items == theirs.unknown_items == ("nope",)
    assert [s.item_id for s in mine.scores] == [s.item_id for s in theirs.scores]
    assert [s.score for s in mine.scores] == pytest.approx([s.score for s in theirs.scores], 1e-4)
    cold = retrieval.score_items(indexed, [], asked, user_id="u")
    assert cold.fallback == "popular"
    assert [s.score for s in cold.scores] == indexed.popularity[:5].tolist()


def test_retrieval_batch_rows_are_exact_rows(
    indexed: Artifact, world: tuple[Engine, Outcome]
) -> None:
    test = world[1].split.test
    rows = np.arange(40, dtype=np.int64)
    history = left_padded(test.history, rows, indexed.max_len)
    counts = test.history.lengths()[rows].astype(np.int64)
    counts[5] = 0  # a user with no known item: the popularity
    history[5] = 0
    seen = np.concatenate(
        [left_padded(test.history, rows[n : n + 1], int(c))[0] for n, c in enumerate(counts)]
    ).astype(np.int64)
    users = np.zeros(len(rows), dtype=np.int64)
    unavailable = np.asarray([2, 7, 11], dtype=np.int64)
    mine = retrieval.rank_rows(indexed, history, users, counts, seen, 10, unavailable)
    theirs = ranking.rank_rows(indexed, history, users, counts, seen, 10, unavailable)
    assert np.array_equal(mine[2], theirs[2]) and not mine[2][5]
    assert recall(mine[0], theirs[0]) >= MIN_RECALL
    assert np.array_equal(mine[0][5], theirs[0][5])
    assert not np.isin(mine[0], unavailable).any()
    starts = np.cumsum(counts) - counts
    for n in range(len(rows)):
        assert not set(mine[0][n]) & set((seen[starts[n] : starts[n] + counts[n]] - 1).tolist())


def test_retrieval_of_an_artifact_without_an_index_is_exact_ranking(
    world: tuple[Engine, Outcome], tmp_path: Path
) -> None:
    exported = write_artifact(world[1], tmp_path / "v2", version=2, code_version="test")
    plain = Artifact.load(exported.folder)
    assert exported.retrieval is None and plain.retrieval is None
    assert not set(RETRIEVAL_FILES) & {p.name for p in exported.folder.iterdir()}
    history = histories_of(world[1], plain)[0]
    assert retrieval.recommend(plain, history, k=10) == ranking.recommend(plain, history, k=10)
