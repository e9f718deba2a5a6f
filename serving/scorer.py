"""The scorer behind the prediction API: the champion's ONNX graph, live histories, filters.

Everything a request needs that is not HTTP lives here: id maps, each user's history read
from the live database (an event recorded a moment ago counts), the catalogue the filters
read, similar items from the model's item representations. Which model answers (the
champion, a challenger, the atomic swap to a new one) is :mod:`serving.lifecycle`'s. The
ranking itself (cold starts, seen and excluded items, filters with backfill, explanations)
is :mod:`recsys.ranking`'s, the same as the CLI's and the batch's, reached through
:mod:`recsys.retrieval` (the item index's candidates when the artifact has one). Imports
neither torch nor bentoml.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from recsys import ranking, retrieval
from recsys.config import DEFAULT_FUTURE_TOLERANCE_SECONDS
from recsys.db.events import Event, Recorded, missing_items, record_events
from recsys.db.queries import user_histories, user_history
from recsys.errors import RecsysError
from recsys.ids import event_type_problem, id_problem
from recsys.online.impressions import Impression, new_recommendation_id, now_ms
from recsys.ranking import Filters, ItemScores, Ranking
from serving.impressions import ImpressionLog
from serving.lifecycle import LoadedModel, ModelHolder, route

logger = logging.getLogger(__name__)

MAX_K = 1000
MAX_LIST = 1000  # items in a session, a score request or an events call
MAX_VALUE = 1e9  # event values are ratings, counts or prices; extraction keeps float32
T = TypeVar("T")
Answer = Ranking | RecsysError | SQLAlchemyError


class RequestError(RecsysError):
    """A request the caller must fix: ``status`` is the HTTP code, ``field`` the culprit."""

    status = 400

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class NotFoundError(RequestError):
    status = 404


@dataclass(frozen=True)
class RecommendQuery:
    """One ``recommend`` request, as :meth:`Scorer.recommend_many` takes them."""

    user_id: str
    k: int = 10
    exclude_seen: bool = True
    filters: Filters = field(default_factory=Filters)
    explain: bool = False


class Scorer(ModelHolder):
    """Answers prediction requests with the current model; swaps models atomically.

    Each request reads ``self._model`` once, so a swap in the middle of a request cannot mix
    two versions. Which models are served (the champion, a challenger, their catalogues) is
    :class:`serving.lifecycle.ModelHolder`'s.
    """

    def __init__(
        self,
        engine: Engine,
        model: LoadedModel | None = None,
        threads: int = 1,
        *,
        retry_seconds: float = 60.0,
        future_tolerance_ms: int = int(DEFAULT_FUTURE_TOLERANCE_SECONDS * 1000),
        create_unknown_items: bool = False,
        impressions: ImpressionLog | None = None,
    ):
        super().__init__(engine, model, threads, retry_seconds=retry_seconds)
        self.future_tolerance_ms = future_tolerance_ms
        self.create_unknown_items = create_unknown_items
        self.impressions = impressions

    # Requests ---------------------------------------------------------------------------

    def recommend(
        self,
        user_id: str,
        *,
        k: int = 10,
        exclude_seen: bool = True,
        filters: Filters | None = None,
        explain: bool = False,
    ) -> Ranking:
        (result,) = self.recommend_many(
            [RecommendQuery(user_id, k, exclude_seen, filters or Filters(), explain)]
        )
        if isinstance(result, RecsysError | SQLAlchemyError):
            raise result
        return result

    def recommend_many(self, queries: Sequence[RecommendQuery]) -> list[Answer]:
        """Answer several ``recommend`` requests together: one history query, one graph run.

        Each answer is what :meth:`recommend` returns for that query alone, or the
        :class:`RequestError` it would raise. Without an experiment all answers come from the
        same model version; with one, each user's arm picks the model, and each arm's
        queries share one graph run.
        """
        champion = self.model
        arms = self._arms
        answers: list[Answer | None] = []
        valid: list[int] = []
        for n, query in enumerate(queries):
            try:
                _check_k(query.k)
            except RequestError as exc:
                answers.append(exc)
            else:
                answers.append(None)
                valid.append(n)
        histories = self._histories(queries, valid, answers) if valid else {}
        valid = [n for n in valid if answers[n] is None]
        if valid:
            requests = [
                ranking.Request(
                    histories.get(queries[n].user_id) or [],
                    user_id=queries[n].user_id,
                    k=queries[n].k,
                    exclude_seen=queries[n].exclude_seen,
                    filters=queries[n].filters,
                    explain=queries[n].explain,
                    known_user=queries[n].user_id in histories,
                )
                for n in valid
            ]
            routes = [route(champion, arms, queries[n].user_id) for n in valid]
            by_model: dict[int, list[int]] = {}  # one graph run per model
            for i, routed in enumerate(routes):
                by_model.setdefault(id(routed[0]), []).append(i)
            for rows in by_model.values():
                model = routes[rows[0]][0]
                rankings = retrieval.recommend_many(
                    model.artifact, [requests[i] for i in rows], catalogue=model.catalogue
                )
                for i, ranked in zip(rows, rankings, strict=True):
                    n = valid[i]
                    _, arm, experiment = routes[i]
                    answers[n] = self._shown(
                        "recommend",
                        ranked,
                        user_id=queries[n].user_id,
                        arm=arm,
                        experiment_id=experiment,
                    )
        return cast(list[Answer], answers)  # each query has its answer by now

    def _histories(
        self,
        queries: Sequence[RecommendQuery],
        valid: list[int],
        answers: list[Answer | None],
    ) -> dict[str, list[str]]:
        """Histories of the valid queries' users in one query; when that query fails, one
        query per user, so a request that breaks it fails alone (its answer is the error)."""
        users = [queries[n].user_id for n in valid]
        try:
            return _retry_on_disconnect(lambda: user_histories(self.engine, users))
        except SQLAlchemyError:
            if len(set(users)) == 1:
                raise
        histories: dict[str, list[str]] = {}
        for n in valid:
            try:
                histories.update(user_histories(self.engine, [queries[n].user_id]))
            except SQLAlchemyError as exc:
                answers[n] = exc
        return histories

    def recommend_session(
        self,
        item_ids: Sequence[str],
        *,
        k: int = 10,
        filters: Filters | None = None,
        explain: bool = False,
        session_id: str | None = None,
        user_id: str | None = None,
    ) -> Ranking:
        model, arm, experiment = route(self.model, self._arms, user_id or session_id)
        _check_k(k)
        _check_list("item_ids", item_ids)
        ranked = retrieval.recommend(
            model.artifact,
            item_ids,
            k=k,
            filters=filters or Filters(),
            explain=explain,
            catalogue=model.catalogue,
        )
        return self._shown(
            "recommend_session",
            ranked,
            session_id=session_id,
            user_id=user_id,
            arm=arm,
            experiment_id=experiment,
        )

    def similar_items(
        self,
        item_id: str,
        *,
        k: int = 10,
        filters: Filters | None = None,
        user_id: str | None = None,
        session_id: str | None = None,
    ) -> Ranking:
        """The ``k`` items nearest ``item_id`` by cosine of the item representations; the
        ranking's scores are those similarities."""
        model, arm, experiment = route(self.model, self._arms, user_id or session_id)
        _check_k(k)
        artifact = model.artifact
        unit = artifact.unit_vectors
        if unit is None:
            raise RequestError(
                "item_id", f"v{model.version} ({model.family}) has no item representations"
            )
        idx = artifact.item_index.get(item_id)
        if idx is None:
            raise NotFoundError("item_id", f"unknown item {item_id!r}")
        ranked = ranking.similar_items(
            artifact, idx - 1, k, filters=filters or Filters(), catalogue=model.catalogue
        )
        return self._shown(
            "similar_items",
            ranked,
            item_id=item_id,
            user_id=user_id,
            session_id=session_id,
            arm=arm,
            experiment_id=experiment,
        )

    def _shown(
        self,
        endpoint: str,
        ranked: Ranking,
        *,
        user_id: str | None = None,
        session_id: str | None = None,
        item_id: str | None = None,
        arm: str | None = None,
        experiment_id: int | None = None,
    ) -> Ranking:
        """The ranking with its ``recommendation_id`` and arm, queued for the impression log."""
        rid = new_recommendation_id()
        log = self.impressions
        if log is not None:
            log.log(
                Impression(
                    rid,
                    endpoint,
                    ranked.model_version,
                    tuple(item.item_id for item in ranked.items),
                    now_ms(),
                    user_id=user_id,
                    session_id=session_id,
                    item_id=item_id,
                    fallback=ranked.fallback,
                    arm=arm,
                    experiment_id=experiment_id,
                )
            )
        return dataclasses.replace(ranked, recommendation_id=rid, arm=arm)

    def score(self, user_id: str, item_ids: Sequence[str]) -> ItemScores:
        model = self.model
        _check_list("item_ids", item_ids)
        history = _retry_on_disconnect(lambda: user_history(self.engine, user_id)) or []
        return retrieval.score_items(model.artifact, history, item_ids, user_id=user_id)

    def record_events(self, events: Sequence[Event]) -> Recorded:
        """Store events after the checks an import applies (ids, time range, value range).

        All or nothing: one bad event refuses the call and nothing is written. Item ids the
        catalogue lacks are refused unless ``create_unknown_items``.
        """
        _check_list("events", events)
        latest = int(time.time() * 1000) + self.future_tolerance_ms
        for n, event in enumerate(events):
            checks = (
                ("user_id", id_problem(event.user_id)),
                ("item_id", id_problem(event.item_id)),
                ("event_type", event_type_problem(event.event_type)),
            )
            for name, problem in checks:
                if problem is not None:
                    raise RequestError(f"events[{n}].{name}", problem)
            when = event.occurred_at_ms
            if when is not None and not 0 <= when <= latest:
                ahead = self.future_tolerance_ms / 1000
                raise RequestError(
                    f"events[{n}].occurred_at",
                    f"must be after 1970 and at most {ahead:g} s ahead of the server's clock",
                )
            if event.value is not None and not abs(event.value) <= MAX_VALUE:
                raise RequestError(f"events[{n}].value", f"must be within +-{MAX_VALUE:g}")
        if not self.create_unknown_items:
            missing = missing_items(self.engine, {e.item_id for e in events})
            if missing:
                n = next(n for n, e in enumerate(events) if e.item_id in missing)
                raise NotFoundError(
                    f"events[{n}].item_id",
                    f"unknown item {events[n].item_id!r} ({len(missing)} unknown in this call);"
                    " add it to the catalogue first, or set RECSYS_UNKNOWN_ITEMS=create",
                )
        return record_events(self.engine, events)


def _retry_on_disconnect(read: Callable[[], T]) -> T:
    """Run a read once more when its connection turned out dead (a restarted database, a
    killed backend): the pool has dropped it, so the second try gets a fresh one."""
    try:
        return read()
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        logger.warning("database connection lost; reading again on a fresh one")
        return read()


def _check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise RequestError("k", f"must be between 1 and {MAX_K}, got {k}")


def _check_list(name: str, values: Sequence[Any]) -> None:
    if not values:
        raise RequestError(name, "must not be empty")
    if len(values) > MAX_LIST:
        raise RequestError(name, f"at most {MAX_LIST} entries, got {len(values)}")
