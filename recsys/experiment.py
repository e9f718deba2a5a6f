"""Train and evaluate one model on a snapshot: the path `recsys train` and the flows share.

extract -> quality gate -> split -> side features -> build -> train -> full-ranking test.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Any

import torch
from sqlalchemy import Engine

from recsys.config import get_settings
from recsys.data.extract import Snapshot, extract, window_start
from recsys.data.features import SideInfo
from recsys.data.splits import Protocol, Split, sample_users, split, with_every_event
from recsys.data.validation import QualityReport, quality_report
from recsys.devices import placed, resolve_device
from recsys.distributed import train_parallel
from recsys.errors import RecsysError
from recsys.evaluation import EvalResult, evaluate
from recsys.models import build_model, spec
from recsys.models.base import Recommender, torch_scorer
from recsys.training import EVAL_MAX_LEN, TrainConfig, TrainResult, train, train_config_with
from recsys.tuned import TunedSettings, split_params

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    """A trained model with everything needed to report and register it."""

    name: str
    model: Recommender
    model_config: Any
    train_config: TrainConfig
    split: Split
    training: TrainResult
    test: EvalResult
    snapshot: Snapshot
    quality: QualityReport
    seconds: float
    tuned: dict[str, Any] | None = None  # the tuned settings it trained with (None: defaults)
    # A refit (see :func:`refit`): the version it is a refit of, whose test metrics it carries.
    refit_of: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "protocol": self.split.protocol,
            # The model's own config: fitted choices (EASE's l2) are recorded there.
            "params": asdict(getattr(self.model, "config", self.model_config)),
            "train_config": asdict(self.train_config),
            "metrics": self.test.summary(),
            "evaluated_users": int(self.test.num_users),
            "epochs": self.training.epochs_run,
            "best_epoch": self.training.best_epoch,
            "best_valid": self.training.best_valid,
            "stopped": self.training.stopped,
            "chosen": self.training.chosen,
            "seconds": round(self.seconds, 3),
            "train_seconds": round(self.training.seconds, 3),
            "seconds_to_best": round(self.training.seconds_to_best, 3),
            "device": self.training.device,
            "precision": self.training.precision,
            "split": self.split.description,
            "snapshot": self.snapshot.descriptor.to_dict(),
            "tuned": self.tuned,
            "refit_of": self.refit_of,
        }


def side_features(engine: Engine, snapshot: Snapshot, data: Split) -> SideInfo:
    """User and item side features for models that read them (training events only)."""
    from recsys.data.features import side_info
    from recsys.db.queries import catalogue_attributes

    catalogue = catalogue_attributes(engine, snapshot.users, snapshot.items)
    return side_info(catalogue, data.train, data.num_users, data.num_items)


def with_recency(model_config: Any, days: float | None = None) -> Any:
    """``model_config`` with the ``recency_half_life_days`` setting (or ``days``) where the
    family weighs events by recency (a ``half_life_days`` field) and none was chosen."""
    days = days if days is not None else get_settings().recency_half_life_days
    if days is None or getattr(model_config, "half_life_days", days) is not None:
        return model_config
    return replace(model_config, half_life_days=days)


def evaluate_on_test(model: Recommender, data: Split, device: str | None = "cpu") -> EvalResult:
    """Test metrics of ``model``, scored on ``device`` (the model is left where it was)."""
    with placed(model, resolve_device(device)):
        return evaluate(
            torch_scorer(model),
            data.test,
            num_items=data.num_items,
            protocol=data.protocol,
            ks=(10, 20),
            max_len=model.max_len or EVAL_MAX_LEN,
        )


def train_and_evaluate(
    engine: Engine,
    name: str,
    protocol: Protocol,
    *,
    model_config: Any = None,
    train_overrides: dict[str, Any] | None = None,
    snapshot: Snapshot | None = None,
    data: Split | None = None,
    window_days: float | None = None,
    nproc: int = 1,
    tuned: TunedSettings | None = None,
    eval_users: int | None = None,
) -> Outcome:
    """Train model family ``name`` on ``engine``'s database and evaluate it on the test set.

    Pass ``snapshot``/``data`` to reuse one extraction and split across several models;
    ``window_days`` extracts only the events of the last that many days. ``nproc`` > 1
    trains a learned model in that many processes (:mod:`recsys.distributed`); evaluation
    and what follows happen once, here. ``tuned`` (:mod:`recsys.tuned`) replaces the
    family's default config and training settings with a study's best trial; ``model_config``
    and ``train_overrides`` still win over it. ``eval_users`` validates and tests on a seeded
    sample of that many users (:func:`~recsys.data.splits.sample_users`).
    """
    started = time.perf_counter()
    model_spec = spec(name)
    snapshot = snapshot or extract(engine, after_ms=window_start(window_days))
    quality = quality_report(snapshot)
    if not quality.ok:
        reasons = "; ".join(f.message for f in quality.errors)
        raise RecsysError(f"the data cannot be trained on: {reasons}")
    data = data or split(snapshot, protocol)
    if eval_users is not None:
        data = sample_users(data, eval_users)
    if len(data.valid) == 0 or len(data.test) == 0:
        raise RecsysError(
            f"the {protocol} split leaves no users to validate or test on: import more data"
        )
    side = side_features(engine, snapshot, data) if model_spec.model.uses_side_features else None
    tuned_config, tuned_train = split_params(name, tuned.params) if tuned else (None, {})
    model_config = with_recency(model_config or tuned_config or model_spec.config())
    config = train_config_with(
        model_spec.train_defaults, {**tuned_train, **(train_overrides or {})}
    )
    build = partial(
        build_model, name, data.num_users, data.num_items, side=side, config=model_config
    )
    model, result = _train_built(build, data, config, nproc)
    test = evaluate_on_test(model, data, result.device)
    return Outcome(
        name=name,
        model=model,
        model_config=model_config,
        train_config=config,
        split=data,
        training=result,
        test=test,
        snapshot=snapshot,
        quality=quality,
        seconds=time.perf_counter() - started,
        tuned=None if tuned is None else tuned.to_dict(),
    )


def _train_built(
    build: Callable[[], Recommender],
    data: Split,
    config: TrainConfig,
    nproc: int,
    *,
    validating: bool = True,
) -> tuple[Recommender, TrainResult]:
    """A model from ``build`` (seeded by ``config.seed``, its initial weights part of the run)
    trained in ``nproc`` processes when it trains by batches, else in this one; it comes
    back on the CPU."""
    torch.manual_seed(config.seed)
    model = build()
    if nproc > 1 and model.batch_kind != "fit":
        loop = partial(train, validating=validating)
        state, result = train_parallel(loop, build, data, config, nproc)
        model.load_state_dict(state)
        model.eval()
        return model, result
    return model, train(model, data, config, validating=validating)


def refit(
    engine: Engine, outcome: Outcome, version: int, *, nproc: int = 1, threads: int | None = None
) -> Outcome:
    """``outcome``'s model trained again on every event of its snapshot, for serving.

    Leave-last-out holds each user's two newest events out of training, and right after a
    change of taste those are often the only events of the new taste; a time split holds out
    the newest events of all. The refit trains on them too, with what the measured run
    (registered as ``version``) chose: its model config (EASE's l2 included), its training
    settings and seed, and its best epoch's count of epochs (a time budget grows with the
    events; ``threads`` replaces the run's threads). Nothing is left to measure it on, so it
    carries ``version``'s test metrics and says so (``refit_of``); the promotion gate
    measures a refit champion through ``version`` (:func:`recsys.registry.promotion.gate`).
    """
    started = time.perf_counter()
    model_spec = spec(outcome.name)
    data = with_every_event(outcome.split, outcome.snapshot)
    side = (
        side_features(engine, outcome.snapshot, data)
        if model_spec.model.uses_side_features
        else None
    )
    model_config = copy.deepcopy(getattr(outcome.model, "config", outcome.model_config))
    budget = outcome.train_config.budget_seconds
    grown = len(data.train.user_idx) / max(1, len(outcome.split.train.user_idx))
    config = replace(
        outcome.train_config,
        max_epochs=max(1, outcome.training.best_epoch),
        budget_seconds=None if budget is None else budget * grown,
        threads=threads or outcome.train_config.threads,
    )
    build = partial(
        build_model, outcome.name, data.num_users, data.num_items, side=side, config=model_config
    )
    model, result = _train_built(build, data, config, nproc, validating=False)
    logger.info(
        "%s refit on %d events (v%d trained on %d): %d epochs, %.1f s",
        outcome.name,
        len(data.train.user_idx),
        version,
        len(outcome.split.train.user_idx),
        result.epochs_run,
        result.seconds,
    )
    training = replace(
        result,
        best_valid=outcome.training.best_valid,  # measured on the run it repeats
        chosen=outcome.training.chosen,
        searched=[],
    )
    return replace(
        outcome,
        model=model,
        model_config=model_config,
        train_config=config,
        split=data,
        training=training,
        seconds=time.perf_counter() - started,
        refit_of=version,
    )
