"""Which models a serving worker answers with: the champion, loaded, checked and warmed up;
a challenger beside it while an experiment runs; their catalogues kept current.

:class:`ModelHolder` swaps a model in with one reference assignment, so a request that read
it once never mixes two versions; :class:`serving.scorer.Scorer` answers the requests. A
version that fails to load leaves the current one serving. Imports neither torch nor bentoml.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from recsys import registry
from recsys.artifacts import ONNX_FILE, Artifact
from recsys.catalogue import Catalogue
from recsys.db.catalogue import revision as catalogue_revision
from recsys.errors import RecsysError
from recsys.online.experiments import CHALLENGER_ARM, Experiment, running_experiment

logger = logging.getLogger(__name__)


class NotReadyError(RecsysError):
    """No model is loaded yet (no champion, or it is still loading)."""


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


def route(
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


class ModelHolder:
    """The models a worker serves, and how they change: reloads, experiments, catalogues."""

    def __init__(
        self,
        engine: Engine,
        model: LoadedModel | None = None,
        threads: int = 1,
        *,
        retry_seconds: float = 60.0,
    ):
        self.engine = engine
        self.threads = threads
        self._model = model
        self._reload_lock = threading.Lock()
        self.last_reload_error: str | None = None
        self._failed_version: int | None = None
        self._failed_at = 0.0
        self.retry_seconds = retry_seconds
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


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\s\\/:'\"]+)+[\\/]?")


def public_message(exc: BaseException) -> str:
    """What a caller may see of a load failure: the message without file system paths (a
    path becomes its last part) and without exception class names."""
    text = str(exc) if isinstance(exc, RecsysError) else "the model could not be loaded"
    if isinstance(exc, SQLAlchemyError):
        text = "the database is unavailable"
    return _PATH.sub(lambda m: m.group().rstrip("/\\").rsplit("/", 1)[-1], text)
