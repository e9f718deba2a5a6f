"""The prediction API: a BentoML service whose endpoints are routed by :mod:`serving.api`.

Run it with ``recsys serve`` or ``bentoml serve serving.service:RecsysService``. It serves the
registry's champion (or, when that cannot be loaded here, the model a bento carries; set
``RECSYS_MODEL_SOURCE=bento`` to start on the packaged model), polls the ``champion`` alias
every ``RECSYS_POLL_SECONDS`` (default 10) and swaps to a new one without dropping requests;
``POST /admin/reload`` with an admin key does it at once. Every endpoint needs an API key
(``recsys keys create``) with its scope; ``RECSYS_READ_AUTH=open`` lets reads through without.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import bentoml
from fastapi import Depends, Security
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel

from recsys.config import Settings, get_settings
from recsys.db.engine import create_engine
from recsys.db.events import Event
from recsys.keys import ADMIN, EVENTS, READ, KeyRing
from recsys.ranking import Ranking
from serving import runtime
from serving.api import (
    BODY_ERRORS,
    Guard,
    WorkerHeader,
    answered_as_api_errors,
    bearer,
    create_app,
    errors,
    lean_route,
    put_in_front,
)
from serving.batcher import MicroBatcher
from serving.impressions import ImpressionLog
from serving.schemas import (
    EventsIn,
    EventsRecorded,
    ModelInfo,
    Recommendations,
    RecommendIn,
    ReloadOutcome,
    ScoreIn,
    Scores,
    SessionIn,
    SimilarIn,
    SimilarItems,
    filters_of,
)
from serving.scorer import RecommendQuery, Scorer

logger = logging.getLogger(__name__)
T = TypeVar("T")

Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]


def _private_metrics_dir() -> None:
    """Give this server its own Prometheus multiprocess folder.

    ``bentoml serve`` empties ``$BENTOML_HOME/prometheus_multiproc_dir`` at start, so two
    services sharing a BentoML home would wipe each other's counters. The serving process
    (the only one without ``PROMETHEUS_MULTIPROC_DIR`` set) points BentoML at a folder of its
    own before BentoML prepares it; its workers inherit the variable. Folders of servers
    that have exited are removed.
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    from bentoml._internal.configuration.containers import BentoMLContainer

    shared = Path(BentoMLContainer.bentoml_home.get()) / "prometheus_multiproc_dir"
    root = shared.with_name("recsys_prometheus")
    root.mkdir(parents=True, exist_ok=True)
    for folder in root.glob("pid-*"):
        pid = folder.name.removeprefix("pid-")
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
    BentoMLContainer.prometheus_multiproc_dir.set(str(root / f"pid-{os.getpid()}"))


_private_metrics_dir()
SETTINGS = get_settings()
runtime.apply(SETTINGS.serve_tunings)  # before BentoML builds this worker's app
app = create_app(SETTINGS)

REQUESTS = bentoml.metrics.Counter(
    name="recsys_requests", documentation="Requests per endpoint", labelnames=["endpoint"]
)
FALLBACKS = bentoml.metrics.Counter(
    name="recsys_fallbacks",
    documentation="Responses answered by a fallback (popularity)",
    labelnames=["endpoint", "fallback"],
)
MODEL_VERSION = bentoml.metrics.Gauge(
    name="recsys_model_version",
    documentation="Registry version of the model being served, per live worker (pid label)",
    multiprocess_mode="liveall",  # one value per worker: each follows the champion alone
)
BATCH_SIZE = bentoml.metrics.Histogram(
    name="recsys_recommend_batch_size",
    documentation="recommend requests answered together by one history query and graph run",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
MAX_BATCH = 64
RELOAD_FAILURES = bentoml.metrics.Counter(
    name="recsys_reload_failures", documentation="New champions that failed to load"
)
IMPRESSIONS_WRITTEN = bentoml.metrics.Counter(
    name="recsys_impressions_written", documentation="Impressions written to the database"
)
GC_PAUSES = bentoml.metrics.Histogram(
    name="recsys_gc_full_pause_seconds",
    documentation="Pauses of the workers' full (generation 2) garbage collections",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0),
)
IMPRESSIONS_DROPPED = bentoml.metrics.Counter(
    name="recsys_impressions_dropped",
    documentation="Impressions dropped because the log's buffer was full",
)


def _count(endpoint: str, result: T) -> T:
    REQUESTS.labels(endpoint=endpoint).inc()
    fallback = getattr(result, "fallback", None)
    if fallback:
        FALLBACKS.labels(endpoint=endpoint, fallback=fallback).inc()
    return result


@bentoml.service(name="recsys", traffic={"timeout": 30})
@bentoml.asgi_app(app, path="/")
class RecsysService:
    """Recommendations from the registry's champion; every response names its version."""

    def __init__(self) -> None:
        settings = get_settings()  # now, not at import: the database and keys are the caller's
        engine = create_engine(settings.database_url)
        self.impressions = (
            ImpressionLog(
                engine,
                capacity=settings.impression_buffer,
                interval=settings.impression_flush_seconds,
                # Few, large writes: measured to cost the requests least (benchmarks/README.md).
                batch=max(1, settings.impression_buffer // 2),
                on_drop=IMPRESSIONS_DROPPED.inc,
                on_write=IMPRESSIONS_WRITTEN.inc,
            )
            if settings.impression_buffer
            else None
        )
        self.scorer = Scorer(
            engine,
            threads=settings.scorer_threads,
            retry_seconds=settings.reload_retry_seconds,
            future_tolerance_ms=int(settings.future_tolerance_seconds * 1000),
            create_unknown_items=settings.unknown_items == "create",
            impressions=self.impressions,
        )
        admin: dict[str, tuple[str, ...]] = (
            {settings.admin_secret: (ADMIN,)} if settings.admin_secret else {}
        )
        self.guard = Guard(KeyRing(engine, static=admin), settings)
        # Concurrent recommend requests share one history query and one ONNX run.
        self._recommend_batcher: MicroBatcher[RecommendQuery, Ranking] = MicroBatcher(
            self.scorer.recommend_many, max_batch=MAX_BATCH, on_batch=BATCH_SIZE.observe
        )
        if settings.model_source == "bento":
            self._serve_packaged()
        self._report(self.scorer.reload())
        self.scorer.refresh_experiment()  # a restart keeps every user in their arm
        if settings.model_source == "auto" and not self.scorer.ready:
            # No loadable champion here (say, a fresh machine): serve what the bento carries.
            self._serve_packaged()
        self.poll_seconds = settings.poll_seconds
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="champion-poll", daemon=True)
        self._poller.start()
        tune_worker(settings)  # start-up is done

    def _serve_packaged(self) -> None:
        """Start on the model the bento carries; the registry may still move us on."""
        from serving.bento import stored_artifact

        artifact = stored_artifact()
        if artifact is None:
            logger.warning("no champion could be loaded and no model is packaged")
            return
        self.scorer.serve_artifact(artifact)
        logger.info("serving packaged v%d (%s)", artifact.version, artifact.family)

    def __is_ready__(self) -> bool:
        return self.scorer.ready

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        self._stop.set()
        if self.impressions is not None:
            self.impressions.close()  # what was queued is written before the worker exits

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self._report(self.scorer.reload())
            self.scorer.refresh_experiment()
            self.scorer.refresh_catalogue()

    def _report(self, outcome: dict[str, Any]) -> None:
        if outcome.get("error"):
            RELOAD_FAILURES.inc()
        if self.scorer.ready:
            MODEL_VERSION.set(self.scorer.model.version)

    @app.post(
        "/recommend",
        response_model=Recommendations,
        responses=errors(*BODY_ERRORS, 401, 403, 503),
    )
    async def recommend(self, request: RecommendIn, key: Credentials = None) -> Recommendations:
        """Top-k for a user from their live history; popularity for unknown users."""
        with answered_as_api_errors():
            self.guard.check(key, READ)
            query = RecommendQuery(
                request.user_id,
                request.k,
                request.exclude_seen,
                filters_of(request.filters),
                request.explain,
            )
            result = Recommendations.of(await self._recommend_batcher.submit(query))
        return _count("recommend", result)

    @app.post(
        "/recommend_session",
        response_model=Recommendations,
        responses=errors(*BODY_ERRORS, 401, 403, 503),
    )
    def recommend_session(self, request: SessionIn, key: Credentials = None) -> Recommendations:
        """Top-k for an anonymous visitor from the items they viewed (most recent last)."""
        with answered_as_api_errors():
            self.guard.check(key, READ)
            result = Recommendations.of(
                self.scorer.recommend_session(
                    request.item_ids,
                    k=request.k,
                    filters=filters_of(request.filters),
                    explain=request.explain,
                    session_id=request.session_id,
                    user_id=request.user_id,
                )
            )
        return _count("recommend_session", result)

    @app.post(
        "/similar_items",
        response_model=SimilarItems,
        responses=errors(*BODY_ERRORS, 401, 403, 404, 503),
    )
    def similar_items(self, request: SimilarIn, key: Credentials = None) -> SimilarItems:
        """The k items closest to ``item_id`` in the model's item representations."""
        with answered_as_api_errors():
            self.guard.check(key, READ)
            result = SimilarItems.of(
                request.item_id,
                self.scorer.similar_items(
                    request.item_id,
                    k=request.k,
                    filters=filters_of(request.filters),
                    user_id=request.user_id,
                    session_id=request.session_id,
                ),
            )
        return _count("similar_items", result)

    @app.post("/score", response_model=Scores, responses=errors(*BODY_ERRORS, 401, 403, 503))
    def score(self, request: ScoreIn, key: Credentials = None) -> Scores:
        """Scores of the given items for a user (for re-ranking by a caller)."""
        with answered_as_api_errors():
            self.guard.check(key, READ)
            result = Scores.of(self.scorer.score(request.user_id, request.item_ids))
        return _count("score", result)

    @app.post(
        "/events",
        response_model=EventsRecorded,
        responses=errors(*BODY_ERRORS, 401, 403, 404, 503),
    )
    def events(self, request: EventsIn, key: Credentials = None) -> EventsRecorded:
        """Record interactions (all or none); they shape the very next request.

        Needs a key with the ``events`` scope. An item the catalogue lacks is a 404
        (``unknown_item``) unless ``RECSYS_UNKNOWN_ITEMS=create``.
        """
        with answered_as_api_errors():
            self.guard.check(key, EVENTS)
            recorded = self.scorer.record_events(
                [
                    Event(
                        user_id=e.user_id,
                        item_id=e.item_id,
                        event_type=e.event_type,
                        value=e.value,
                        occurred_at_ms=_epoch_ms(e.occurred_at),
                        recommendation_id=e.recommendation_id,
                    )
                    for e in request.events
                ]
            )
            result = EventsRecorded(**recorded.__dict__)
        return _count("events", result)

    @app.api_route(
        "/model", methods=["GET", "POST"], response_model=ModelInfo, responses=errors(401, 403)
    )
    def model_info(self, key: Credentials = None) -> ModelInfo:
        """The version being served, when it was loaded, and the last reload error."""
        with answered_as_api_errors():
            self.guard.check(key, READ)
            return ModelInfo(**self.scorer.info())

    @app.post("/admin/reload", response_model=ReloadOutcome, responses=errors(401, 403, 503))
    def reload(self, key: Credentials = None) -> ReloadOutcome:
        """Load the current champion now, retrying one that failed before (admin scope)."""
        with answered_as_api_errors():
            self.guard.check(key, ADMIN)
            outcome = self.scorer.reload(retry=True)
            self._report(outcome)
            return ReloadOutcome(**outcome)


def tune_worker(settings: Settings) -> None:
    """Once a worker has started: its collector tuned (RECSYS_SERVE_TUNING) and its full
    collections' pauses timed into ``recsys_gc_full_pause_seconds``."""
    tuned = runtime.tune_collector(settings.serve_tunings)
    runtime.watch_full_collections(GC_PAUSES.observe)
    logger.info("worker %s ready; runtime tuning %s", worker_name(), tuned or "none")


def worker_name() -> str:
    """This process's BentoML worker index (1..N under ``bentoml serve``), else ``main``."""
    index = bentoml.server_context.worker_index
    return "main" if index is None else str(index)


# Every worker imports this module after BentoML has set its index. (The decorators made
# the class a bentoml Service, which mypy cannot see.)
_SERVICE: Any = RecsysService
_SERVICE.add_asgi_middleware(WorkerHeader, worker=worker_name())


async def _service_on_the_loop() -> Any:
    return bentoml.get_current_service()


def _self_on_the_loop(service: Any) -> int:
    """Hand each endpoint its service through :func:`_service_on_the_loop`; how many.

    BentoML gives an endpoint's ``self`` the default ``Depends(bentoml.get_current_service)``,
    a plain function FastAPI would run in a worker thread on every request (a thread hop
    before async recommend even starts); the same lookup as a coroutine stays on the event
    loop. It is swapped in the endpoints' signatures, which FastAPI reads when it first routes
    a request, rather than through ``app.dependency_overrides``: with any override set,
    FastAPI rebuilds every dependency of every request from its signature (measured: 7% of
    the event loop's time under load).
    """
    swapped = 0
    for method in vars(service.inner).values():
        signature = getattr(method, "__signature__", None)
        if not isinstance(signature, inspect.Signature) or not signature.parameters:
            continue
        first, *rest = signature.parameters.values()
        default = first.default
        if getattr(default, "dependency", None) is bentoml.get_current_service:
            changed = first.replace(default=Depends(_service_on_the_loop))
            method.__signature__ = signature.replace(parameters=[changed, *rest])
            swapped += 1
    return swapped


ENDPOINTS_ON_THE_LOOP = _self_on_the_loop(RecsysService)

# The endpoints with a body, answered by lean routes in front of their FastAPI routes (the
# same functions and models; see serving.api.lean_route). /model and /admin/reload keep
# FastAPI's.
LEAN_BODIES: dict[str, tuple[str, type[BaseModel]]] = {
    "/recommend": ("recommend", RecommendIn),
    "/recommend_session": ("recommend_session", SessionIn),
    "/similar_items": ("similar_items", SimilarIn),
    "/score": ("score", ScoreIn),
    "/events": ("events", EventsIn),
}
put_in_front(
    app,
    [
        lean_route(path, model, vars(_SERVICE.inner)[name], bentoml.get_current_service)
        for path, (name, model) in LEAN_BODIES.items()
    ],
)


def _epoch_ms(moment: datetime | None) -> int | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)
