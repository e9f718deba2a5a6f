"""The recommendation explorer: what the running service answers for a user, an anonymous
session or an item, and, when it cannot be asked, the same from the champion's ONNX graph in
this process (:mod:`recsys.retrieval` and :mod:`recsys.ranking`, as the service and
``recsys recommend`` rank: onnxruntime, no torch). Every answer says which one
answered and why.

The service is ``RECSYS_SERVICE_URL``, asked with ``RECSYS_API_KEY`` (a ``read`` key). Its
answers are logged as impressions like any client's; the in-process answers are not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import Engine

from recsys import ranking, retrieval
from recsys.config import Settings
from recsys.db.queries import user_history
from recsys.errors import RecsysError
from recsys.ranking import Filters, Ranking
from ui.artifacts import ArtifactCache

TIMEOUT_SECONDS = 5.0
SERVICE = "service"
IN_PROCESS = "in-process"


@dataclass(frozen=True)
class Answer:
    """A list as the service's JSON shapes it (``items``: item_id, title, score,
    matches_filters, because), who answered (``source``) and why that one (``note``);
    ``error`` instead when the request itself was refused (an unknown item, say)."""

    source: str
    note: str
    reply: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def items(self) -> list[dict[str, Any]]:
        return list(self.reply.get("items") or [])


class ServiceRefused(Exception):
    """The service answered the request with a 4xx about the request itself."""


class Explorer:
    def __init__(self, settings: Settings, engine: Engine, artifacts: ArtifactCache) -> None:
        self.engine = engine
        self.artifacts = artifacts
        self.url = (settings.service_url or "").rstrip("/") or None
        key = settings.api_secret
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}

    # What the pages ask ---------------------------------------------------------------------

    def recommend(self, user_id: str, k: int, filters: Filters) -> Answer:
        body = {"user_id": user_id, "k": k, "explain": True, "filters": _filters_json(filters)}
        return self._ask("/recommend", body, lambda: self._recommend_here(user_id, k, filters))

    def session(self, item_ids: list[str], k: int, filters: Filters) -> Answer:
        body = {"item_ids": item_ids, "k": k, "explain": True, "filters": _filters_json(filters)}
        return self._ask(
            "/recommend_session", body, lambda: self._session_here(item_ids, k, filters)
        )

    def similar(self, item_id: str, k: int, filters: Filters) -> Answer:
        body = {"item_id": item_id, "k": k, "filters": _filters_json(filters)}
        return self._ask("/similar_items", body, lambda: self._similar_here(item_id, k, filters))

    # The service, else here -----------------------------------------------------------------

    def _ask(self, path: str, body: dict[str, Any], here: Any) -> Answer:
        if self.url is None:
            why = "RECSYS_SERVICE_URL is not set"
        else:
            try:
                reply = self._post(path, body)
            except ServiceRefused as exc:
                return Answer(
                    SERVICE, f"the service at {self.url} refused the request", error=str(exc)
                )
            except _Unavailable as exc:
                why = f"the service at {self.url} did not answer ({exc})"
            else:
                return Answer(SERVICE, f"the service at {self.url}", _normalised(reply))
        try:
            reply = here()
        except RecsysError as exc:
            return Answer(
                IN_PROCESS, f"the champion's ONNX graph in this process: {why}", error=str(exc)
            )
        return Answer(IN_PROCESS, f"the champion's ONNX graph in this process: {why}", reply)

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self.url is not None
        try:
            response = httpx.post(
                f"{self.url}{path}", json=body, headers=self._headers, timeout=TIMEOUT_SECONDS
            )
        except httpx.HTTPError as exc:
            raise _Unavailable(type(exc).__name__) from exc
        if response.status_code in (400, 404, 422):
            raise ServiceRefused(_message(response))
        if response.status_code != 200:
            raise _Unavailable(f"HTTP {response.status_code}: {_message(response)}")
        data: dict[str, Any] = response.json()
        return data

    def _recommend_here(self, user_id: str, k: int, filters: Filters) -> dict[str, Any]:
        artifact = self.artifacts.champion()
        history = user_history(self.engine, user_id)
        ranked = retrieval.recommend(
            artifact,
            history or [],
            user_id=user_id,
            k=k,
            filters=filters,
            explain=True,
            known_user=history is not None,
            catalogue=self.artifacts.catalogue(artifact),
        )
        return _reply(ranked)

    def _session_here(self, item_ids: list[str], k: int, filters: Filters) -> dict[str, Any]:
        artifact = self.artifacts.champion()
        ranked = retrieval.recommend(
            artifact,
            item_ids,
            k=k,
            filters=filters,
            explain=True,
            catalogue=self.artifacts.catalogue(artifact),
        )
        return _reply(ranked)

    def _similar_here(self, item_id: str, k: int, filters: Filters) -> dict[str, Any]:
        artifact = self.artifacts.champion()
        index = artifact.item_index.get(item_id)
        if index is None:
            raise RecsysError(f"unknown item {item_id!r}")
        ranked = ranking.similar_items(
            artifact, index - 1, k, filters=filters, catalogue=self.artifacts.catalogue(artifact)
        )
        return _reply(ranked)


class _Unavailable(Exception):
    """The service could not be asked (down, unreachable, refusing the key, failing)."""


def _message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(data, dict) and data.get("message"):
        return str(data["message"])
    return str(data)[:200]


def _filters_json(filters: Filters) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("include_genres", "exclude_genres", "exclude_items"):
        values = list(getattr(filters, name))
        if values:
            out[name] = values
    for name in ("min_year", "max_year", "min_price", "max_price"):
        value = getattr(filters, name)
        if value is not None:
            out[name] = value
    return out


def _reply(ranked: Ranking) -> dict[str, Any]:
    """A ranking in the service's response shape."""
    return {
        "model_version": ranked.model_version,
        "model_family": ranked.model_family,
        "fallback": ranked.fallback,
        "backfilled": ranked.backfilled,
        "unknown_items": list(ranked.unknown_items),
        "warnings": list(ranked.warnings),
        "arm": None,
        "items": [
            {
                "item_id": item.item_id,
                "title": item.title,
                "score": round(item.score, 6),
                "matches_filters": item.matches_filters,
                "because": None
                if item.because is None
                else [
                    {"item_id": b.item_id, "title": b.title, "weight": b.weight}
                    for b in item.because
                ],
            }
            for item in ranked.items
        ],
    }


def _normalised(reply: dict[str, Any]) -> dict[str, Any]:
    """The service's answer with a ``score`` on every item (similar items name it
    ``similarity``)."""
    items = []
    for item in reply.get("items") or []:
        if "score" not in item and "similarity" in item:
            item = {**item, "score": item["similarity"]}
        items.append(item)
    return {**reply, "items": items}
