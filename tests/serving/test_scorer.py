"""The scorer on a small exported SASRec: live history, filters, cold start, explanations, swap."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from recsys import ranking, registry
from recsys.ann import MIN_RECALL, recall
from recsys.artifacts import ONNX_FILE
from recsys.db import catalogue as catalogue_state
from recsys.db.engine import create_engine
from recsys.db.events import Event, record_events
from recsys.db.migrate import upgrade
from recsys.db.queries import user_history
from recsys.db.schema import interactions_table, items_table
from recsys.ranking import Filters, Ranking
from serving.scorer import NotFoundError, RecommendQuery, RequestError, Scorer


@pytest.fixture(scope="module")
def scorer(home: Any) -> Scorer:
    scorer = Scorer(home.engine)
    assert scorer.reload()["version"] == home.champion
    return scorer


def test_scorer_recommend_excludes_the_live_history_and_names_the_version(
    scorer: Scorer, home: Any
) -> None:
    out = scorer.recommend("u5", k=10)
    assert out.model_version == home.champion and out.model_family == "sasrec"
    assert out.fallback is None and out.known_user is True
    seen = set(user_history(home.engine, "u5") or [])
    ids = [row.item_id for row in out.items]
    assert len(ids) == 10 and not set(ids) & seen
    scores = [row.score for row in out.items]
    assert scores == sorted(scores, reverse=True)
    assert all(row.title == f"Item {row.item_id[1:]}" for row in out.items)

    with_seen = scorer.recommend("u5", k=90, exclude_seen=False)
    assert {row.item_id for row in with_seen.items} & seen


def test_scorer_an_event_changes_the_next_recommendation(scorer: Scorer) -> None:
    before = {r.item_id: r.score for r in scorer.recommend("u7", k=10).items}
    first = next(iter(before))
    recorded = scorer.record_events([Event("u7", first, "purchase")])
    assert recorded.inserted == 1
    after = {r.item_id: r.score for r in scorer.recommend("u7", k=10).items}
    assert first not in after  # seen now, so excluded
    common = set(before) & set(after)
    # The sequence model read the new event: the remaining items were scored afresh.
    assert any(abs(before[i] - after[i]) > 1e-4 for i in common)


def test_scorer_cold_start_popularity_respects_filters(scorer: Scorer) -> None:
    out = scorer.recommend("never-seen-user", k=5, filters=Filters(include_genres=("Drama",)))
    assert out.known_user is False and out.fallback == "popular"
    assert all(row.matches_filters for row in out.items)
    model = scorer.model
    drama = model.catalogue.genres["Drama"]
    for row in out.items:
        assert drama[model.artifact.item_index[row.item_id] - 1]


def test_scorer_a_user_created_after_training_gets_personalised_results(
    scorer: Scorer, home: Any
) -> None:
    items = scorer.model.artifact.item_ids[:3]
    scorer.record_events(
        [Event("brand-new", item, occurred_at_ms=n) for n, item in enumerate(items)]
    )
    out = scorer.recommend("brand-new", k=5)
    assert out.known_user is True and out.fallback is None
    assert not {row.item_id for row in out.items} & set(items)


def test_scorer_filters_backfill_when_too_strict_and_say_so(scorer: Scorer) -> None:
    catalogue = scorer.model.catalogue
    rare = min(catalogue.genres, key=lambda g: int(catalogue.genres[g].sum()))
    count = int(catalogue.genres[rare].sum())
    k = count + 5
    out = scorer.recommend("u9", k=k, exclude_seen=False, filters=Filters(include_genres=(rare,)))
    assert len(out.items) == k and out.backfilled == 5
    assert [row.matches_filters for row in out.items] == [True] * count + [False] * 5

    excluded = [row.item_id for row in scorer.recommend("u9", k=3).items]
    out = scorer.recommend("u9", k=3, filters=Filters(exclude_items=tuple(excluded)))
    assert not {row.item_id for row in out.items} & set(excluded)


@pytest.mark.parametrize(
    ("filters", "field"),
    [
        (Filters(include_genres=("Opera",)), "filters.include_genres"),
        (Filters(exclude_genres=("Opera",)), "filters.exclude_genres"),
        (Filters(attributes={"colour": "red"}), "filters.attributes.colour"),
    ],
)
def test_scorer_filters_nothing_matches_are_warned_about_and_backfilled(
    scorer: Scorer, filters: Filters, field: str
) -> None:
    out = scorer.recommend("u1", k=5, filters=filters)
    assert [w.split(":")[0] for w in out.warnings] == [field]
    assert len(out.items) == 5
    if field != "filters.exclude_genres":  # excluding an unknown genre excludes nothing
        assert out.backfilled == 5 and not any(r.matches_filters for r in out.items)


def test_scorer_explanations_name_history_items_with_weights(scorer: Scorer, home: Any) -> None:
    history = set(user_history(home.engine, "u11") or [])
    out = scorer.recommend("u11", k=5, explain=True)
    for row in out.items:
        because = row.because
        assert 1 <= len(because) <= 3
        assert {b.item_id for b in because} <= history
        weights = [b.weight for b in because]
        assert weights == sorted(weights, reverse=True) and all(-1 <= w <= 1 for w in weights)


def test_scorer_session_similar_items_and_scores(scorer: Scorer) -> None:
    ids = scorer.model.artifact.item_ids
    session = scorer.recommend_session([ids[0], ids[1], "not-an-item"], k=4)
    assert session.fallback is None and session.unknown_items == ("not-an-item",)
    assert not {row.item_id for row in session.items} & {ids[0], ids[1]}

    similar = scorer.similar_items(ids[2], k=5)
    assert len(similar.items) == 5 and ids[2] not in {r.item_id for r in similar.items}
    sims = [r.score for r in similar.items]
    assert sims == sorted(sims, reverse=True)
    with pytest.raises(NotFoundError):
        scorer.similar_items("not-an-item")

    scored = scorer.score("u3", [ids[4], ids[5], "not-an-item"])
    assert [s.item_id for s in scored.scores] == [ids[4], ids[5]]
    assert scored.unknown_items == ("not-an-item",)
    full = scorer.recommend("u3", k=90, exclude_seen=False)
    by_id = {row.item_id: row.score for row in full.items}
    assert scored.scores[0].score == pytest.approx(by_id[ids[4]], abs=1e-5)


def test_scorer_rejects_bad_sizes(scorer: Scorer) -> None:
    with pytest.raises(RequestError, match="k: must be between 1 and 1000"):
        scorer.recommend("u1", k=0)
    with pytest.raises(RequestError, match="item_ids: must not be empty"):
        scorer.recommend_session([])
    with pytest.raises(RequestError, match="at most 1000"):
        scorer.score("u1", ["i1"] * 1001)
    with pytest.raises(RequestError, match=r"events\[1\]\.occurred_at"):
        scorer.record_events([Event("u1", "i1"), Event("u1", "i2", occurred_at_ms=-5)])
    with pytest.raises(RequestError, match=r"events\[0\]\.value"):
        scorer.record_events([Event("u1", "i1", value=1e300)])


def test_scorer_events_refuse_unknown_items_future_times_and_control_characters(
    home: Any,
) -> None:
    """Regression: an anonymous call could create catalogue items and events a day ahead."""
    scorer = Scorer(home.engine, future_tolerance_ms=60_000)
    items_before = _count(home.engine, items_table)
    events_before = _count(home.engine, interactions_table)
    with pytest.raises(NotFoundError, match=r"events\[1\]\.item_id: unknown item 'DROP TABLE'"):
        scorer.record_events([Event("u1", "i1"), Event("u1", "DROP TABLE")])
    soon = int(time.time() * 1000) + 3_600_000
    with pytest.raises(RequestError, match=r"events\[0\]\.occurred_at.*60 s ahead"):
        scorer.record_events([Event("u1", "i1", occurred_at_ms=soon)])
    for bad in ("a\x00b", "a\x0bb", "x\u0085"):
        with pytest.raises(RequestError, match="control characters"):
            scorer.record_events([Event(bad, "i1")])
    assert _count(home.engine, items_table) == items_before
    assert _count(home.engine, interactions_table) == events_before  # all or nothing

    creating = Scorer(home.engine, create_unknown_items=True)
    assert creating.record_events([Event("u1", "brand-new-item")]).new_items == 1


def _count(engine: Any, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_scorer_swaps_to_a_new_champion_and_keeps_serving_when_one_fails_to_load(
    home: Any,
) -> None:
    scorer = Scorer(home.engine)
    scorer.reload()
    old = scorer.model.version
    broken = home.register("sasrec")
    folder = registry.get_version(home.engine, broken).artifact_path
    assert folder is not None
    onnx_path = f"{folder}/{ONNX_FILE}"
    with open(onnx_path, "ab") as handle:
        handle.write(b"tampered")
    registry.promote(home.engine, broken, actor="tests", reason="a bad release")
    outcome = scorer.reload()
    assert outcome["changed"] is False and outcome["failed"] == broken
    assert "does not match its recorded sha256" in outcome["error"]
    assert scorer.model.version == old and scorer.recommend("u1").model_version == old
    error = scorer.info()["last_reload_error"]
    assert error and str(folder) not in error and "/" not in error  # no paths leak
    assert "Error:" not in error  # nor exception class names

    good = home.register("sasrec")
    registry.promote(home.engine, good, actor="tests", reason="the fix")
    assert scorer.reload() == {"changed": True, "version": good, "previous": old}
    assert scorer.recommend("u1").model_version == good
    assert scorer.info()["last_reload_error"] is None
    registry.promote(home.engine, home.champion, actor="tests", reason="restore")


def test_scorer_retries_a_failed_version_once_repaired(home: Any) -> None:
    """Regression: a version that failed to load was never tried again until a restart."""
    scorer = Scorer(home.engine, retry_seconds=3600)
    scorer.reload()
    old = scorer.model.version
    version = home.register("sasrec")
    folder = registry.get_version(home.engine, version).artifact_path
    onnx_path = Path(f"{folder}/{ONNX_FILE}")
    original = onnx_path.read_bytes()
    onnx_path.write_bytes(original + b"tampered")
    registry.promote(home.engine, version, actor="tests", reason="a bad release")
    try:
        assert scorer.reload()["failed"] == version
        onnx_path.write_bytes(original)
        assert scorer.reload() == {"changed": False, "version": old, "failed": version}
        assert scorer.reload(retry=True) == {"changed": True, "version": version, "previous": old}

        onnx_path.write_bytes(original + b"tampered")
        scorer.reload(old, force=True)
        scorer.retry_seconds = 0.0  # the poller's back-off has passed
        assert scorer.reload()["failed"] == version
        onnx_path.write_bytes(original)
        assert scorer.reload()["changed"] is True and scorer.model.version == version
    finally:
        onnx_path.write_bytes(original)
        registry.promote(home.engine, home.champion, actor="tests", reason="restore")


def _without_float_noise(answer: Any) -> Any:
    """Scores from a padded batch may differ from a lone run in the last float bits; every
    answer has its own recommendation id."""
    if isinstance(answer, RequestError):
        return ("error", str(answer))
    assert answer.recommendation_id is not None
    items = tuple(row._replace(score=round(row.score, 4)) for row in answer.items)
    return dataclasses.replace(answer, items=items, recommendation_id=None)


@pytest.mark.parametrize("family", ["sasrec", "neumf", "sasrec-index"])
def test_scorer_recommend_many_answers_each_query_as_recommend_alone(
    home: Any, family: str, request: pytest.FixtureRequest
) -> None:
    """The batched path behind the service: histories of every length, unknown users, a bad
    request among good ones, filters and explanations; each answer equals a lone call."""
    if family == "sasrec-index":
        home = request.getfixturevalue("indexed_home")
    scorer = Scorer(home.engine)
    version = home.register(family) if family == "neumf" else home.champion
    scorer.reload(version)
    assert scorer.info()["scoring"] == ("index" if family == "sasrec-index" else "exact")
    queries = [
        RecommendQuery("u1"),
        RecommendQuery("u7", k=5, explain=True),
        RecommendQuery("nobody", k=4),
        RecommendQuery("u3", k=0),  # invalid: fails alone
        RecommendQuery("u12", k=6, exclude_seen=False),
        RecommendQuery("u20", k=8, filters=Filters(include_genres=("Drama",))),
        RecommendQuery("u1", k=3),
    ]
    together = scorer.recommend_many(queries)
    assert len(together) == len(queries)
    for query, answer in zip(queries, together, strict=True):
        try:
            alone: Any = scorer.recommend(
                query.user_id,
                k=query.k,
                exclude_seen=query.exclude_seen,
                filters=query.filters,
                explain=query.explain,
            )
        except RequestError as exc:
            alone = exc
        assert _without_float_noise(answer) == _without_float_noise(alone), query
    assert isinstance(together[3], RequestError) and together[3].field == "k"
    assert together[2].fallback == "popular" and together[2].known_user is False
    assert together[0].fallback is None and together[0].model_version == version


@pytest.mark.postgres
def test_scorer_a_query_that_breaks_the_shared_history_query_fails_alone(
    home: Any, fresh_postgres_url: str
) -> None:
    """Regression: on PostgreSQL a NUL in one user id raised a driver error for the shared
    history query, failing every request batched with it."""
    upgrade(create_engine(fresh_postgres_url))
    engine = create_engine(fresh_postgres_url)
    try:
        record_events(engine, [Event("u1", "i1"), Event("u2", "i2")])
        scorer = Scorer(engine)
        scorer.serve_artifact(registry.load_artifact(home.engine, home.champion))
        queries = [RecommendQuery("u1", k=3), RecommendQuery("a\x00b", k=3), RecommendQuery("u2")]
        first, broken, last = scorer.recommend_many(queries)
        assert isinstance(broken, DBAPIError)
        assert isinstance(first, Ranking) and first.known_user is True
        assert isinstance(last, Ranking) and len(last.items) == 10
        assert "i1" not in {r.item_id for r in first.items}  # its history was read
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_scorer_reads_again_when_its_connection_was_killed(
    home: Any, fresh_postgres_url: str
) -> None:
    """A backend killed under a pooled connection (a restart, a failover) costs no request."""
    upgrade(create_engine(fresh_postgres_url))
    engine = sa_create_engine(fresh_postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        record_events(engine, [Event("u1", "i1")])
        scorer = Scorer(engine)
        scorer.serve_artifact(registry.load_artifact(home.engine, home.champion))
        assert scorer.recommend("u1").known_user is True  # a pooled connection now exists
        database = engine.url.database
        with engine.connect() as conn:
            own = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        admin = sa_create_engine(engine.url.set(database="postgres"))
        with admin.connect() as conn:
            killed = conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = :db AND pid = :pid"
                ),
                {"db": database, "pid": own},
            ).scalar_one()
        admin.dispose()
        assert killed == 1
        assert scorer.recommend("u1").known_user is True
        assert scorer.score("u1", ["i2"]).user_id == "u1"
    finally:
        engine.dispose()


def test_scorer_answers_from_the_item_index_by_the_rules_of_exact_ranking(
    indexed_home: Any,
) -> None:
    """A champion registered with its item index: the scorer loads and warms the encoder and
    the index, and its lists are exact ranking's (recall@10) under every rule."""
    home = indexed_home
    scorer = Scorer(home.engine)
    assert scorer.reload()["version"] == home.champion
    model = scorer.model
    artifact = model.artifact
    assert artifact.retrieval is not None and "index" in artifact.__dict__  # warmed at load
    users = [f"u{n}" for n in range(1, 61)]
    answers = scorer.recommend_many([RecommendQuery(user, k=10) for user in users])
    histories = {user: user_history(home.engine, user) or [] for user in users}
    exact = [
        ranking.recommend(artifact, histories[user], user_id=user, k=10, catalogue=model.catalogue)
        for user in users
    ]
    found = np.asarray([a.item_ids for a in answers if isinstance(a, Ranking)])
    assert found.shape == (len(users), 10)
    assert recall(found, np.asarray([e.item_ids for e in exact])) >= MIN_RECALL
    for user, answer in zip(users, answers, strict=True):
        assert isinstance(answer, Ranking) and not set(answer.item_ids) & set(histories[user])

    drama = scorer.recommend("u3", k=10, filters=Filters(include_genres=("Drama",)), explain=True)
    genres = model.catalogue.genres["Drama"]
    assert all(genres[artifact.item_index[i] - 1] for i in drama.item_ids)
    assert all(item.because for item in drama.items)
    excluded = scorer.recommend("u3", k=10, filters=Filters(exclude_items=tuple(drama.item_ids)))
    assert not set(excluded.item_ids) & set(drama.item_ids)
    assert len(excluded.items) == 10
    assert scorer.recommend_session(["i1", "i2"], k=5).fallback is None
    scores = scorer.score("u3", drama.item_ids[:3])
    assert [s.score for s in scores.scores] == pytest.approx(drama.scores[:3], abs=1e-4)

    gone = answers[0].item_ids[0] if isinstance(answers[0], Ranking) else ""
    with home.engine.begin() as conn:
        conn.execute(
            items_table.update().where(items_table.c.external_id == gone).values(available=False)
        )
        catalogue_state.bump(conn)
    assert scorer.refresh_catalogue() is True
    for user in users[:10]:
        assert gone not in scorer.recommend(user, k=20).item_ids
