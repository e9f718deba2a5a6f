"""The scorer behind the prediction API: the champion's ONNX graph, live histories, filters.

Everything a request needs that is not HTTP lives here: id maps, each user's history read
from the live database (an event recorded a moment ago counts), the catalogue the filters
read, similar items from the model's item representations, and the atomic swap to a new
champion. The ranking itself (cold starts, seen and excluded items, filters with backfill,
explanations) is :mod:`recsys.ranking`'s, the same as the CLI's and the batch's, reached
through :mod:`recsys.retrieval` (the item index's candidates when the artifact has one).
Imports neither torch nor bentoml.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from recsys import ranking, registry, retrieval
from recsys.artifacts import ONNX_FILE, Artifact
from recsys.catalogue import Catalogue
from recsys.config import DEFAULT_FUTURE_TOLERANCE_SECONDS
from recsys.db.catalogue import revision as catalogue_revision
from recsys.db.events import Event, Recorded, missing_items, record_events
from recsys.db.queries import user_histories, user_history
from recsys.errors import RecsysError
from recsys.ids import event_type_problem, id_problem
from recsys.online.experiments import CHALLENGER_ARM, Experiment, running_experiment
from recsys.online.impressions import Impression, new_recommendation_id, now_ms
from recsys.ranking import Filters, ItemScores, Ranking
from serving.impressions import ImpressionLog

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


class NotReadyError(RecsysError):
    """No model is loaded yet (no champion, or it is still loading)."""


@dataclass(frozen=True)
class RecommendQuery:
    """One ``recommend`` request, as :meth:`Scorer.recommend_many` takes them."""

    user_id: str
    k: int = 10
    exclude_seen: bool = True
    filters: Filters = field(default_factory=Filters)
    explain: bool = False


@dataclass
class LoadedModel:
    """A champion ready to serve: its artifact, catalogue and popularity order."""

    artifact: Artifact
    catalogue: Catalogue
    loaded_at: float
    load_seconds: float
    source: str = "registry"  # or "bento": the model a bento carries

    @property
    def version(self) -> int:
        return self.artifact.version

    @property
    def family(self) -> str:
        return self.artifact.family

    def warm_up(self) -> None:
        """Run the graph at a few batch sizes so the first request pays no set-up cost."""
        for rows in (1, 8):
            history = np.zeros((rows, min(self.artifact.max_len, 50)), dtype=np.int64)
            history[:, -1] = 1
            self.artifact.score(history, np.ones(rows, dtype=np.int64))
        if self.artifact.unit_vectors is not None:
            self.artifact.unit_vectors[:1] @ self.artifact.unit_vectors[:8].T
        if self.artifact.retrieval is not None:  # the encoder and the index, loaded and run
            history = np.ones((1, 1), dtype=np.int64)
            self.artifact.index.search(self.artifact.encode(history), 10)


def load_model(engine: Engine, ref: int | str = registry.CHAMPION, threads: int = 1) -> LoadedModel:
    """Load, verify and warm up a registered version (the champion by default)."""
    started = time.perf_counter()
    return prepare(engine, registry.load_artifact(engine, ref, threads=threads), started)


def prepare(
    engine: Engine, artifact: Artifact, started: float | None = None, source: str = "registry"
) -> LoadedModel:
    """Catalogue and warm-up for an already verified artifact."""
    started = time.perf_counter() if started is None else started
    model = LoadedModel(
        artifact=artifact,
        catalogue=Catalogue.load(engine, artifact.item_ids),
        loaded_at=time.time(),
        load_seconds=0.0,
        source=source,
    )
    model.warm_up()
    model.load_seconds = time.perf_counter() - started
    return model


@dataclass(frozen=True)
class Arms:
    """A running experiment and its challenger, ready to answer its share of users."""

    experiment: Experiment
    challenger: LoadedModel


def _route(
    champion: LoadedModel, arms: Arms | None, who: str | None
) -> tuple[LoadedModel, str | None, int | None]:
    """The model that answers ``who`` (a user or session id), its arm and experiment."""
    if arms is None:
        return champion, None, None
    arm = arms.experiment.arm(who)
    if arm is None:
        return champion, None, None
    model = arms.challenger if arm == CHALLENGER_ARM else champion
    return model, arm, arms.experiment.id


class Scorer:
    """Answers prediction requests with the current model; swaps models atomically.

    Each request reads ``self._model`` once, so a swap in the middle of a request cannot mix
    two versions.
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
        self.engine = engine
        self.threads = threads
        self._model = model
        self._reload_lock = threading.Lock()
        self.last_reload_error: str | None = None
        self._failed_version: int | None = None
        self._failed_at = 0.0
        self.retry_seconds = retry_seconds
        self.future_tolerance_ms = future_tolerance_ms
        self.create_unknown_items = create_unknown_items
        self.impressions = impressions
        self._arms: Arms | None = None
        self.experiment_error: str | None = None
        self._experiment_failed: tuple[int, float] | None = None

    @property
    def ready(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> LoadedModel:
        model = self._model
        if model is None:
            raise NotReadyError(
                "no model is loaded yet: promote a champion (`recsys train` or "
                "`recsys models promote`)"
            )
        return model

    def reload(
        self, ref: int | str = registry.CHAMPION, *, force: bool = False, retry: bool = False
    ) -> dict[str, Any]:
        """Load the version ``ref`` names beside the current one and swap if it differs.

        A version that fails to load leaves the current one serving; the error is kept in
        ``last_reload_error`` and returned. That version is tried again when ``retry`` is
        set (an explicit reload) or once ``retry_seconds`` have passed (the poller), so a
        repaired artifact is picked up without a restart.
        """
        with self._reload_lock:
            current = self._model.version if self._model is not None else None
            try:
                target = registry.alias_version(self.engine, ref) if isinstance(ref, str) else ref
            except Exception as exc:  # the database may be briefly unreachable
                return self._reload_failed(current, None, exc)
            if target is None:
                return {"changed": False, "version": current, "reason": f"no {ref} yet"}
            if target == current and not force:
                return {"changed": False, "version": current}
            recently = time.monotonic() - self._failed_at < self.retry_seconds
            if target == self._failed_version and recently and not (force or retry):
                return {"changed": False, "version": current, "failed": target}
            try:
                fresh = load_model(self.engine, target, threads=self.threads)
            except Exception as exc:
                return self._reload_failed(current, target, exc)
            self._model = fresh  # the swap: one reference assignment
            self.last_reload_error = None
            self._failed_version = None
            logger.info(
                "serving v%d (%s), loaded in %.2fs", target, fresh.family, fresh.load_seconds
            )
            return {"changed": True, "version": target, "previous": current}

    def refresh_experiment(self) -> dict[str, Any]:
        """Follow the experiment table: load the running experiment's challenger beside the
        champion and route its share of users to it; drop it when the experiment stops.

        A challenger that fails to load leaves all traffic on the champion; the reason is
        kept in ``experiment_error`` (shown by ``/model``) and the load is retried after
        ``retry_seconds``. The swap is one reference assignment: no request is dropped.
        """
        try:
            running = running_experiment(self.engine)
        except SQLAlchemyError as exc:
            return {"changed": False, "error": public_message(exc)}
        current = self._arms
        if running is None:
            self._arms = None
            self.experiment_error = None
            return {"changed": current is not None, "experiment": None}
        if current is not None and current.experiment.id == running.id:
            return {"changed": False, "experiment": running.id}
        failed = self._experiment_failed
        recently = failed is not None and time.monotonic() - failed[1] < self.retry_seconds
        if failed is not None and failed[0] == running.id and recently:
            return {"changed": False, "experiment": None, "error": self.experiment_error}
        try:
            challenger = load_model(self.engine, running.challenger_version, threads=self.threads)
        except Exception as exc:
            self._arms = None
            self._experiment_failed = (running.id, time.monotonic())
            self.experiment_error = (
                f"experiment #{running.id}: v{running.challenger_version} could not be loaded "
                f"({public_message(exc)}); all traffic stays on the champion"
            )
            logger.error("%s: %s: %s", self.experiment_error, type(exc).__name__, exc)
            return {"changed": False, "experiment": None, "error": self.experiment_error}
        self._arms = Arms(running, challenger)
        self.experiment_error = None
        self._experiment_failed = None
        logger.info(
            "experiment #%d: v%d answers %.0f%% of users",
            running.id,
            running.challenger_version,
            running.share * 100,
        )
        return {"changed": True, "experiment": running.id}

    def refresh_catalogue(self) -> bool:
        """Read the catalogue again if it changed since the served one was read (a sync or an
        import moved its revision); True when it was swapped in (the champion's, and the
        challenger's while an experiment runs).

        Availability, titles, prices and genres thus reach responses and filters within one
        poll, without a new model. A failed read leaves the current catalogue serving.
        """
        model = self._model
        if model is None:
            return False
        try:
            revision = catalogue_revision(self.engine)
            arms = self._arms
            stale_arms = arms is not None and arms.challenger.catalogue.revision != revision
            if revision == model.catalogue.revision and not stale_arms:
                return False
            fresh = Catalogue.load(self.engine, model.artifact.item_ids)
            challenger = None
            if arms is not None:
                challenger = Catalogue.load(self.engine, arms.challenger.artifact.item_ids)
        except SQLAlchemyError as exc:
            logger.warning("could not read the catalogue again: %s", type(exc).__name__)
            return False
        with self._reload_lock:
            if self._model is not model:  # a new version came meanwhile, with its own
                return False
            self._model = dataclasses.replace(model, catalogue=fresh)
            if arms is not None and challenger is not None and self._arms is arms:
                updated = dataclasses.replace(arms.challenger, catalogue=challenger)
                self._arms = Arms(arms.experiment, updated)
        logger.info(
            "catalogue revision %d: %d items unavailable", fresh.revision, len(fresh.unavailable)
        )
        return True

    def _reload_failed(
        self, current: int | None, target: int | None, exc: Exception
    ) -> dict[str, Any]:
        message = public_message(exc)
        self._failed_version = target
        self._failed_at = time.monotonic()
        self.last_reload_error = f"v{target}: {message}" if target is not None else message
        logger.error(
            "could not load v%s, still serving v%s: %s: %s",
            target,
            current,
            type(exc).__name__,
            exc,
        )
        return {"changed": False, "version": current, "failed": target, "error": message}

    def serve_artifact(self, artifact: Artifact) -> None:
        """Serve an artifact that came from elsewhere (a bento's model store).

        Refused if the registry knows this version with another ONNX hash.
        """
        try:
            record = registry.get_version(self.engine, artifact.version)
        except registry.RegistryError:
            record = None  # a database without this version: the manifest check stands
        recorded = None if record is None else record.onnx_sha256
        if recorded is not None and recorded != artifact.manifest_sha256(ONNX_FILE):
            raise RecsysError(
                f"the packaged model claims to be v{artifact.version} but its ONNX graph "
                "differs from the registry's"
            )
        with self._reload_lock:
            self._model = prepare(self.engine, artifact, source="bento")

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
            routes = [_route(champion, arms, queries[n].user_id) for n in valid]
            by_model: dict[int, list[int]] = {}  # one graph run per model
            for i, route in enumerate(routes):
                by_model.setdefault(id(route[0]), []).append(i)
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
        model, arm, experiment = _route(self.model, self._arms, user_id or session_id)
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
        model, arm, experiment = _route(self.model, self._arms, user_id or session_id)
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

    def info(self) -> dict[str, Any]:
        model = self._model
        return {
            "ready": model is not None,
            "model_version": None if model is None else model.version,
            "model_family": None if model is None else model.family,
            "source": None if model is None else model.source,
            "num_items": None if model is None else model.artifact.num_items,
            # How every item is reached: "exact" (all scored) or "index" (RECSYS_ANN_MIN_ITEMS).
            "scoring": None
            if model is None
            else ("exact" if model.artifact.retrieval is None else "index"),
            "loaded_at": None if model is None else model.loaded_at,
            "load_seconds": None if model is None else round(model.load_seconds, 3),
            "last_reload_error": self.last_reload_error,
            "experiment_id": None if self._arms is None else self._arms.experiment.id,
            "challenger_version": (
                None if self._arms is None else self._arms.experiment.challenger_version
            ),
            "challenger_share": None if self._arms is None else self._arms.experiment.share,
            "experiment_error": self.experiment_error,
        }


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


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\s\\/:'\"]+)+[\\/]?")


def public_message(exc: BaseException) -> str:
    """What a caller may see of a load failure: the message without file system paths (a
    path becomes its last part) and without exception class names."""
    text = str(exc) if isinstance(exc, RecsysError) else "the model could not be loaded"
    if isinstance(exc, SQLAlchemyError):
        text = "the database is unavailable"
    return _PATH.sub(lambda m: m.group().rstrip("/\\").rsplit("/", 1)[-1], text)


def _check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise RequestError("k", f"must be between 1 and {MAX_K}, got {k}")


def _check_list(name: str, values: Sequence[Any]) -> None:
    if not values:
        raise RequestError(name, "must not be empty")
    if len(values) > MAX_LIST:
        raise RequestError(name, f"at most {MAX_LIST} entries, got {len(values)}")
