"""The prediction API: a thin BentoML service over :mod:`serving.scorer`.

Run it with ``recsys serve`` or ``bentoml serve serving.service:RecsysService``. It serves the
registry's champion (or, when that cannot be loaded here, the model a bento carries; set
``RECSYS_MODEL_SOURCE=bento`` to start on the packaged model), polls the ``champion`` alias
every ``RECSYS_POLL_SECONDS`` (default 10) and swaps to a new one without dropping requests;
``POST /admin/reload`` with ``Authorization: Bearer $RECSYS_ADMIN_TOKEN`` does it at once.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Annotated, Any, TypeVar

import bentoml
from bentoml.exceptions import BentoMLException, InvalidArgument, NotFound, ServiceUnavailable
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import SQLAlchemyError

from recsys.config import get_settings
from recsys.db.engine import create_engine
from recsys.db.events import Event
from serving.batcher import MicroBatcher
from serving.scorer import (
    MAX_K,
    MAX_LIST,
    Filters,
    NotFoundError,
    NotReadyError,
    RecommendQuery,
    RequestError,
    Scorer,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
Id = Annotated[str, Field(min_length=1, max_length=255)]
K = Annotated[int, Field(ge=1, le=MAX_K, description="How many items (1-1000).")]

REQUESTS = bentoml.metrics.Counter(
    name="recsys_requests", documentation="Requests per endpoint", labelnames=["endpoint"]
)
FALLBACKS = bentoml.metrics.Counter(
    name="recsys_fallbacks",
    documentation="Responses answered by a fallback (popularity)",
    labelnames=["endpoint", "fallback"],
)
MODEL_VERSION = bentoml.metrics.Gauge(
    name="recsys_model_version", documentation="Registry version of the model being served"
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


class FiltersIn(BaseModel):
    """Item filters; genre, year, price and attribute filters are backfilled when too strict."""

    model_config = ConfigDict(extra="forbid")

    include_genres: list[Annotated[str, Field(max_length=255)]] = Field(
        default_factory=list, max_length=100, description="Keep items with any of these genres."
    )
    exclude_genres: list[Annotated[str, Field(max_length=255)]] = Field(
        default_factory=list, max_length=100, description="Drop items with any of these genres."
    )
    exclude_items: list[Id] = Field(
        default_factory=list, max_length=MAX_LIST, description="Never return these item ids."
    )
    attributes: dict[Annotated[str, Field(max_length=255)], str | int | float | bool] = Field(
        default_factory=dict, max_length=20, description="Item attributes that must match."
    )
    min_year: int | None = None
    max_year: int | None = None
    min_price: float | None = Field(default=None, allow_inf_nan=False)
    max_price: float | None = Field(default=None, allow_inf_nan=False)

    def to_filters(self) -> Filters:
        return Filters(
            include_genres=tuple(self.include_genres),
            exclude_genres=tuple(self.exclude_genres),
            exclude_items=tuple(self.exclude_items),
            attributes=dict(self.attributes),
            min_year=self.min_year,
            max_year=self.max_year,
            min_price=self.min_price,
            max_price=self.max_price,
        )


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: Id
    item_id: Id
    event_type: Annotated[str, Field(min_length=1, max_length=32)] = "interaction"
    value: float | None = Field(default=None, allow_inf_nan=False)
    occurred_at: datetime | None = Field(default=None, description="ISO 8601; default now.")


class Because(BaseModel):
    item_id: str
    title: str | None
    weight: float


class RecommendedItem(BaseModel):
    item_id: str
    title: str | None
    score: float
    matches_filters: bool
    because: list[Because] | None = None


class Recommendations(BaseModel):
    model_version: int
    model_family: str
    fallback: str | None
    backfilled: int
    unknown_items: list[str]
    items: list[RecommendedItem]
    user_id: str | None = None
    known_user: bool | None = None


class SimilarItem(BaseModel):
    item_id: str
    title: str | None
    similarity: float
    matches_filters: bool


class SimilarItems(BaseModel):
    item_id: str
    model_version: int
    model_family: str
    backfilled: int
    items: list[SimilarItem]


class ItemScore(BaseModel):
    item_id: str
    score: float


class Scores(BaseModel):
    user_id: str
    model_version: int
    model_family: str
    fallback: str | None
    scores: list[ItemScore]
    unknown_items: list[str]


class EventsRecorded(BaseModel):
    inserted: int
    duplicates: int
    new_users: int
    new_items: int


class ModelInfo(BaseModel):
    ready: bool
    model_version: int | None
    model_family: str | None
    source: str | None
    num_items: int | None
    loaded_at: float | None
    load_seconds: float | None
    last_reload_error: str | None


@contextmanager
def _translated_errors(endpoint: str) -> Iterator[None]:
    """The scorer's errors as the HTTP errors BentoML answers with (4xx, or 503)."""
    try:
        yield
    except NotFoundError as exc:
        raise NotFound(str(exc)) from None
    except RequestError as exc:
        raise InvalidArgument(str(exc)) from None
    except NotReadyError as exc:
        raise ServiceUnavailable(str(exc)) from None
    except SQLAlchemyError as exc:
        logger.error("database error in %s: %s", endpoint, exc)
        raise ServiceUnavailable("the database is unavailable; retry") from None


def _count_fallback(endpoint: str, result: Any) -> None:
    fallback = getattr(result, "fallback", None)
    if fallback:
        FALLBACKS.labels(endpoint=endpoint, fallback=fallback).inc()


@bentoml.service(name="recsys", traffic={"timeout": 30})
class RecsysService:
    """Recommendations from the registry's champion; every response names its version."""

    def __init__(self) -> None:
        settings = get_settings()
        threads = int(os.environ.get("RECSYS_SCORER_THREADS") or 1)
        self.scorer = Scorer(create_engine(settings.database_url), threads=threads)
        # Concurrent recommend requests share one history query and one ONNX run.
        self._recommend_batcher: MicroBatcher[RecommendQuery, dict[str, Any]] = MicroBatcher(
            self.scorer.recommend_many, max_batch=MAX_BATCH, on_batch=BATCH_SIZE.observe
        )
        source = os.environ.get("RECSYS_MODEL_SOURCE", "auto")
        if source == "bento":
            self._serve_packaged()
        self._report(self.scorer.reload())
        if source == "auto" and not self.scorer.ready:
            # No loadable champion here (say, a fresh machine): serve what the bento carries.
            self._serve_packaged()
        self.poll_seconds = float(os.environ.get("RECSYS_POLL_SECONDS") or 10)
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="champion-poll", daemon=True)
        self._poller.start()

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

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self._report(self.scorer.reload())

    def _report(self, outcome: dict[str, Any]) -> None:
        if outcome.get("error"):
            RELOAD_FAILURES.inc()
        if self.scorer.ready:
            MODEL_VERSION.set(self.scorer.model.version)

    def _call(self, endpoint: str, work: Callable[[], T]) -> T:
        REQUESTS.labels(endpoint=endpoint).inc()
        with _translated_errors(endpoint):
            result = work()
        _count_fallback(endpoint, result)
        return result

    @bentoml.api
    async def recommend(
        self,
        user_id: Id,
        k: K = 10,
        exclude_seen: bool = True,
        filters: FiltersIn | None = None,
        explain: bool = False,
    ) -> Recommendations:
        """Top-k for a user from their live history; popularity for unknown users."""
        REQUESTS.labels(endpoint="recommend").inc()
        with _translated_errors("recommend"):
            query = RecommendQuery(
                user_id, k, exclude_seen, filters.to_filters() if filters else Filters(), explain
            )
            result = Recommendations(**await self._recommend_batcher.submit(query))
        _count_fallback("recommend", result)
        return result

    @bentoml.api
    def recommend_session(
        self,
        item_ids: Annotated[list[Id], Field(min_length=1, max_length=MAX_LIST)],
        k: K = 10,
        filters: FiltersIn | None = None,
        explain: bool = False,
    ) -> Recommendations:
        """Top-k for an anonymous visitor from the items they viewed (most recent last)."""
        return self._call(
            "recommend_session",
            lambda: Recommendations(
                **self.scorer.recommend_session(
                    item_ids,
                    k=k,
                    filters=filters.to_filters() if filters else None,
                    explain=explain,
                )
            ),
        )

    @bentoml.api
    def similar_items(
        self, item_id: Id, k: K = 10, filters: FiltersIn | None = None
    ) -> SimilarItems:
        """The k items closest to ``item_id`` in the model's item representations."""
        return self._call(
            "similar_items",
            lambda: SimilarItems(
                **self.scorer.similar_items(
                    item_id, k=k, filters=filters.to_filters() if filters else None
                )
            ),
        )

    @bentoml.api
    def score(
        self,
        user_id: Id,
        item_ids: Annotated[list[Id], Field(min_length=1, max_length=MAX_LIST)],
    ) -> Scores:
        """Scores of the given items for a user (for re-ranking by a caller)."""
        return self._call("score", lambda: Scores(**self.scorer.score(user_id, item_ids)))

    @bentoml.api
    def events(
        self, events: Annotated[list[EventIn], Field(min_length=1, max_length=MAX_LIST)]
    ) -> EventsRecorded:
        """Record interactions; they are stored when this returns and shape the next request."""

        def record() -> EventsRecorded:
            recorded = self.scorer.record_events(
                [
                    Event(
                        user_id=e.user_id,
                        item_id=e.item_id,
                        event_type=e.event_type,
                        value=e.value,
                        occurred_at_ms=_epoch_ms(e.occurred_at),
                    )
                    for e in events
                ]
            )
            return EventsRecorded(**recorded.__dict__)

        return self._call("events", record)

    @bentoml.api(route="/model")
    def model_info(self) -> ModelInfo:
        """The version being served, when it was loaded, and the last reload error."""
        return ModelInfo(**self.scorer.info())

    @bentoml.api(route="/admin/reload")
    def reload(self, context: bentoml.Context) -> dict[str, Any]:
        """Load the current champion now (``Authorization: Bearer $RECSYS_ADMIN_TOKEN``)."""
        token = os.environ.get("RECSYS_ADMIN_TOKEN")
        given = context.request.headers.get("authorization", "")
        if not token or given != f"Bearer {token}":
            raise BentoMLException("reload needs the admin token", error_code=HTTPStatus.FORBIDDEN)
        outcome = self.scorer.reload()
        self._report(outcome)
        return outcome


def _epoch_ms(moment: datetime | None) -> int | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)
