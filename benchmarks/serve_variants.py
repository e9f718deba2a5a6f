"""The comparison services of ``benchmarks/serve.py``, in the prediction API's process layout.

Both take their ``@bentoml.service`` arguments from :class:`serving.service.RecsysService` (its
name and config), so worker count, threads and traffic settings stay identical to the
service they are compared with:

- ``NoopService``: ``POST /noop`` (a sync endpoint, run in BentoML's worker threads, as the
  naive variant is) and ``POST /noop_async`` (a coroutine, as ``/recommend`` is) return a
  constant; the faster of the two is the framework's floor.
- ``TorchEagerService``: ``POST /recommend`` (the body of the real ``/recommend``) scores the
  champion with its torch model in eager mode, one request at a time: the user's history read
  from the database, ids mapped with the artifact's item index, seen items excluded, top-k.

Run one with ``bentoml serve benchmarks/serve_variants.py:NoopService`` from the repository
root (``RECSYS_HOME`` and ``RECSYS_DATABASE_URL`` as for the real service).
"""

# mypy: disable-error-code="untyped-decorator"
from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import bentoml
from bentoml.exceptions import InvalidArgument, ServiceUnavailable
from pydantic import Field

from recsys import registry
from recsys.artifacts import Artifact
from recsys.config import get_settings
from recsys.db.engine import create_engine
from recsys.db.queries import user_history
from serving.service import RecsysService, tune_worker

logger = logging.getLogger(__name__)

# The real service's decorator arguments, copied so neither side can change the other's.
_REAL: Any = RecsysService  # a bentoml Service object; its decorator is untyped
SERVICE_NAME: str = _REAL.name
SERVICE_CONFIG: dict[str, Any] = copy.deepcopy(dict(_REAL.config))
NOOP_RESPONSE = {"ok": True}


@bentoml.service(name=SERVICE_NAME, **copy.deepcopy(SERVICE_CONFIG))
class NoopService:
    """Answers a constant: what a request costs before any work is done."""

    def __init__(self) -> None:
        # The real service's runtime tuning and GC pause metric (its timeout middleware comes
        # with the import of serving.service), so the floor has the same process layout.
        tune_worker(get_settings())

    @bentoml.api
    def noop(self) -> dict[str, Any]:
        return NOOP_RESPONSE

    @bentoml.api
    async def noop_async(self) -> dict[str, Any]:
        """The same from a coroutine: BentoML runs it on the event loop, with no thread hop."""
        return NOOP_RESPONSE


@bentoml.service(name=SERVICE_NAME, **copy.deepcopy(SERVICE_CONFIG))
class TorchEagerService:
    """``/recommend`` without ONNX: the champion's torch model in eager mode per request."""

    def __init__(self) -> None:
        # torch is imported here, not at the top, so that NoopService's processes never load it.
        import torch

        from recsys.export import load_model

        settings = get_settings()
        # The scorer's thread count, so both sides get the same intra-op parallelism.
        torch.set_num_threads(int(os.environ.get("RECSYS_SCORER_THREADS") or 1))
        self.engine = create_engine(settings.database_url)
        version = registry.alias_version(self.engine, registry.CHAMPION)
        if version is None:
            raise RuntimeError("no champion to serve: promote a version first")
        record = registry.get_version(self.engine, version)
        if record.artifact_path is None:
            raise RuntimeError(f"v{version} has no artifact")
        folder = Path(record.artifact_path)
        self.artifact = Artifact.load(folder, onnx_sha256=record.onnx_sha256)
        self.model = load_model(folder, onnx_sha256=record.onnx_sha256)
        self.version = version
        self.popularity = torch.from_numpy(self.artifact.popularity.copy())
        if "history" not in self.artifact.input_kinds:
            raise RuntimeError(f"{self.artifact.family} does not score histories")
        logger.info("torch eager: serving v%d (%s)", version, self.artifact.family)

    @bentoml.api
    def recommend(
        self,
        user_id: Annotated[str, Field(min_length=1, max_length=255)],
        k: Annotated[int, Field(ge=1, le=1000)] = 10,
        exclude_seen: bool = True,
        explain: bool = False,
    ) -> dict[str, Any]:
        import torch  # loaded by __init__: a dictionary lookup

        from recsys.models.base import Query

        if explain:
            raise InvalidArgument("the torch eager variant does not explain")
        try:
            history = user_history(self.engine, user_id) or []
        except Exception as exc:
            raise ServiceUnavailable(f"database error: {exc}") from None
        index = self.artifact.item_index
        known = [index[i] for i in history if i in index]
        fallback = None
        with torch.no_grad():
            if known:
                window = torch.tensor([known[-self.artifact.max_len :]], dtype=torch.long)
                scores = self.model.score(Query(history=window))[0]  # (I,)
            else:
                scores, fallback = self.popularity.clone(), "popular"
            if exclude_seen and known:
                scores[torch.tensor(known, dtype=torch.long) - 1] = -torch.inf
            top = torch.topk(scores, min(k, scores.numel()))
        return {
            "user_id": user_id,
            "model_version": self.version,
            "model_family": self.artifact.family,
            "fallback": fallback,
            "items": [
                {"item_id": self.artifact.item_ids[j], "score": round(float(s), 6)}
                for s, j in zip(top.values.tolist(), top.indices.tolist(), strict=True)
                if s != -float("inf")
            ],
        }
