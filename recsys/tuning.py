"""Hyper-parameter tuning (``recsys tune``): an Optuna study per model family and data snapshot.

A trial draws settings from the family's ``SEARCH_SPACE`` (declared in its model file, see
:mod:`recsys.models.space`) with TPE, trains through the one training loop
(:func:`recsys.training.train`) and reports each epoch's validation NDCG@10 to Optuna, whose
median pruner stops trials that trail the others at the same epoch. A closed-form model
(EASE) is fitted once per trial with the trial's ``l2``. Selection is on validation only:
nothing here reads ``Split.test`` (a test hands the tuner a split whose test set raises).

Trials live in our database through Optuna's RDB storage, so a study resumes after a crash
and several workers can share one: the study's name is the family, the split and the
snapshot's digest, and ``trials`` counts the study's finished trials, all runs together.
Optuna keeps its own Alembic ``alembic_version``, which would collide with ours, so its
tables never sit beside ours: on PostgreSQL they live in the schema ``optuna`` of the same
database; on SQLite in a file beside the database (``recsys.db`` -> ``recsys.optuna.db``).
The best trial is recorded in ``tuned_settings`` (:mod:`recsys.tuned`), where the retrain
reads it.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState
from sqlalchemy import Engine, text

from recsys.data.extract import Snapshot, extract, window_start
from recsys.data.features import SideInfo
from recsys.data.splits import Protocol, Split, split
from recsys.data.validation import quality_report
from recsys.errors import RecsysError
from recsys.models import build_model, spec
from recsys.models.space import Choice, Dimension, FloatRange, IntRange, SearchSpace
from recsys.training import TrainConfig, train, train_config_with, validate
from recsys.tuned import TunedSettings, record, split_params

logger = logging.getLogger(__name__)

OPTUNA_SCHEMA = "optuna"  # PostgreSQL: Optuna's tables, beside ours in the same database
METRIC = "ndcg@10"
# A trial's first epochs are noisy, and the first trials have no peers to be compared with.
STARTUP_TRIALS = 3
WARMUP_EPOCHS = 2
# A crashed worker's running trial is failed by the next worker after this long unheard.
HEARTBEAT_SECONDS = 60
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
_SETUP_LOCK = 0x7265_6373_7475_6E65  # "recstune": the advisory lock of the storage's setup


@dataclass
class TuneResult:
    """What a tuning run leaves: the study's best trial and every trial (for the report)."""

    model: str
    protocol: str
    study_name: str
    snapshot_digest: str
    metric: str
    best_params: dict[str, Any]
    best_valid: float
    best_trial: int
    trials: list[dict[str, Any]]  # number, state, value, params, epochs (reported values)
    importances: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    ran: int = 0  # trials this run finished (the rest came from earlier runs or workers)

    @property
    def pruned(self) -> int:
        return sum(t["state"] == "PRUNED" for t in self.trials)

    @property
    def finished(self) -> int:
        return sum(t["state"] in ("COMPLETE", "PRUNED") for t in self.trials)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"pruned": self.pruned, "finished": self.finished}

    def settings(self) -> TunedSettings:
        return TunedSettings(
            family=self.model,
            protocol=self.protocol,
            snapshot_digest=self.snapshot_digest,
            study_name=self.study_name,
            params=self.best_params,
            metric=self.metric,
            best_valid=self.best_valid,
            best_trial=self.best_trial,
            trials=self.finished,
            pruned=self.pruned,
            seconds=self.seconds,
        )


def study_name(model: str, protocol: str, digest: str) -> str:
    """One study per family, split and data snapshot: a re-run on the same data resumes it."""
    return f"{model}-{protocol}-{digest[:16]}"


def storage(engine: Engine) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage in ``engine``'s database, apart from our tables (module doc).

    The URL (with its password) goes to Optuna only, never to a log or an error.
    """
    with warnings.catch_warnings():  # the heartbeat is "experimental" since Optuna 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _storage(engine)


def _storage(engine: Engine) -> optuna.storages.RDBStorage:
    url = engine.url
    if url.get_backend_name() == "postgresql":
        kwargs = {"connect_args": {"options": f"-c search_path={OPTUNA_SCHEMA}"}}
        # Two workers starting at once would race on CREATE SCHEMA and on Optuna's own
        # CREATE TABLEs (PostgreSQL's IF NOT EXISTS is not safe against a concurrent one):
        # one at a time, under an advisory lock that a dead worker's connection releases.
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _SETUP_LOCK})
            try:
                connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {OPTUNA_SCHEMA}"))
                connection.commit()
                return optuna.storages.RDBStorage(
                    url.render_as_string(hide_password=False),
                    engine_kwargs=kwargs,
                    heartbeat_interval=HEARTBEAT_SECONDS,
                )
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _SETUP_LOCK})
                connection.commit()
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            raise RecsysError("tuning needs a database file or server: SQLite is in memory")
        path = Path(url.database)
        beside = path.with_name(f"{path.stem}.{OPTUNA_SCHEMA}{path.suffix or '.db'}")
        return optuna.storages.RDBStorage(
            f"sqlite:///{beside}", heartbeat_interval=HEARTBEAT_SECONDS
        )
    raise RecsysError(f"tuning stores trials on SQLite or PostgreSQL, not {url.get_backend_name()}")


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """The trial's value of each dimension of ``space``."""
    return {name: _suggest(trial, name, dimension) for name, dimension in space.items()}


def _suggest(trial: optuna.Trial, name: str, dimension: Dimension) -> Any:
    if isinstance(dimension, IntRange):
        step = 1 if dimension.log else dimension.step
        return trial.suggest_int(name, dimension.low, dimension.high, step=step, log=dimension.log)
    if isinstance(dimension, FloatRange):
        return trial.suggest_float(name, dimension.low, dimension.high, log=dimension.log)
    if isinstance(dimension, Choice):
        return trial.suggest_categorical(name, dimension.options)
    raise TypeError(f"unknown search dimension {dimension!r}")


def default_trial(name: str) -> dict[str, Any]:
    """The family's default settings as a point of its search space (a default outside a
    range is moved to the nearest bound, one not among a choice's options is left to TPE)."""
    model_spec = spec(name)
    defaults = {
        **asdict(TrainConfig()),
        **model_spec.train_defaults,
        **asdict(model_spec.config()),
    }
    point: dict[str, Any] = {}
    for key, dimension in model_spec.search_space.items():
        value = defaults.get(key)
        if value is None:
            continue
        if isinstance(dimension, Choice):
            if value in dimension.options:
                point[key] = value
        else:
            point[key] = type(dimension.low)(min(max(value, dimension.low), dimension.high))
    return point


def objective(
    name: str,
    data: Split,
    base: dict[str, Any],
    *,
    side: SideInfo | None = None,
    deadline: float | None = None,
) -> Callable[[optuna.Trial], float]:
    """A trial's score: the best validation NDCG@10 of the family trained with its settings.

    ``base`` are ``TrainConfig`` overrides every trial shares (threads, epochs); the trial's
    own settings win over the family's defaults, ``base`` over both. A learned model gets the
    time left before ``deadline`` (``time.monotonic()``) as its training budget.
    """
    model_spec = spec(name)

    def run(trial: optuna.Trial) -> float:
        model_config, trial_train = split_params(name, suggest(trial, model_spec.search_space))
        overrides = {"progress": False, **trial_train, **base}
        if deadline is not None:
            overrides["budget_seconds"] = max(1.0, deadline - time.monotonic())
        config = train_config_with(model_spec.train_defaults, overrides)
        torch.manual_seed(config.seed)
        model = build_model(name, data.num_users, data.num_items, side=side, config=model_config)
        if model.batch_kind == "fit":  # closed form: this trial's l2, one fit
            model.fit(data.train)
            return validate(model, data, config.valid_metric)

        def report(epoch: int, valid: float) -> None:
            trial.report(valid, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: valid {valid:.4f}")

        result = train(model, data, config, on_epoch=report)
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("stopped", result.stopped)
        return result.best_valid

    return run


def tune(
    engine: Engine,
    name: str,
    data: Split,
    snapshot_digest: str,
    *,
    trials: int,
    budget_seconds: float | None = None,
    side: SideInfo | None = None,
    train_overrides: dict[str, Any] | None = None,
    seed: int = 0,
) -> TuneResult:
    """Run (or resume) the study of ``name`` on ``data`` until it has ``trials`` finished
    trials or ``budget_seconds`` pass (a trial under way is cut at the deadline too).

    Only ``data.train`` and ``data.valid`` are read. ``snapshot_digest`` names the study.
    """
    model_spec = spec(name)
    if not model_spec.search_space:
        raise RecsysError(f"{name} has nothing to tune (no SEARCH_SPACE in its model file)")
    if trials < 1:
        raise RecsysError(f"trials must be at least 1, got {trials}")
    if len(data.valid) == 0:
        raise RecsysError(f"the {data.protocol} split leaves no users to validate on")
    started = time.monotonic()
    deadline = None if budget_seconds is None else started + budget_seconds
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name(name, data.protocol, snapshot_digest),
        storage=storage(engine),
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=STARTUP_TRIALS, n_warmup_steps=WARMUP_EPOCHS
        ),
        load_if_exists=True,
    )
    if not study.get_trials(deepcopy=False):
        # A new study tries the family's defaults first: the tuned settings then never lose to
        # them on validation, and TPE starts from a point known to train well.
        study.enqueue_trial(default_trial(name), skip_if_exists=True)
    before = len(study.get_trials(deepcopy=False, states=FINISHED))
    mine: list[int] = []  # the trials this run finished (other workers add theirs meanwhile)

    def count(_: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state in FINISHED:
            mine.append(trial.number)

    if before < trials:
        study.optimize(
            objective(name, data, train_overrides or {}, side=side, deadline=deadline),
            n_trials=trials - before,
            timeout=budget_seconds,
            # A diverging trial (a learning rate too high) fails alone; the study goes on.
            catch=(FloatingPointError,),
            callbacks=[count, MaxTrialsCallback(trials, states=FINISHED)],
        )
    return _result(study, name, data.protocol, snapshot_digest, started, len(mine))


def _result(
    study: optuna.Study, name: str, protocol: str, digest: str, started: float, ran: int
) -> TuneResult:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        raise RecsysError(
            f"no trial of study {study.study_name} completed: give it more time or trials"
        )
    best = study.best_trial
    rows = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "params": t.params,
            "epochs": [t.intermediate_values[k] for k in sorted(t.intermediate_values)],
        }
        for t in study.get_trials(deepcopy=False)
    ]
    return TuneResult(
        model=name,
        protocol=protocol,
        study_name=study.study_name,
        snapshot_digest=digest,
        metric=METRIC,
        best_params=dict(best.params),
        best_valid=float(best.value or 0.0),
        best_trial=best.number,
        trials=rows,
        importances=importances(study),
        seconds=time.monotonic() - started,
        ran=ran,
    )


def importances(study: optuna.Study) -> dict[str, float]:
    """Each setting's share of the validation score's variation (Optuna's default evaluator,
    PED-ANOVA); empty until enough trials completed to say."""
    try:
        found = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as exc:
        logger.info("no parameter importances: %s", exc)
        return {}
    return {k: float(v) for k, v in found.items()}


def prepare(
    engine: Engine, name: str, protocol: Protocol, window_days: float | None = None
) -> tuple[Snapshot, Split, SideInfo | None]:
    """The snapshot, its split and side features (for the families that read them) to tune on;
    data that fails the quality gate fails here, as it would fail training."""
    from recsys.experiment import side_features

    model_spec = spec(name)
    snapshot = extract(engine, after_ms=window_start(window_days))
    quality = quality_report(snapshot)
    if not quality.ok:
        reasons = "; ".join(f.message for f in quality.errors)
        raise RecsysError(f"the data cannot be tuned on: {reasons}")
    data = split(snapshot, protocol)
    side = side_features(engine, snapshot, data) if model_spec.model.uses_side_features else None
    return snapshot, data, side


def tune_and_record(
    engine: Engine,
    name: str,
    protocol: Protocol,
    *,
    trials: int,
    budget_seconds: float | None,
    train_overrides: dict[str, Any] | None = None,
    window_days: float | None = None,
) -> tuple[TuneResult, TunedSettings]:
    """``recsys tune`` in one process: extract, split, tune, record the best trial."""
    snapshot, data, side = prepare(engine, name, protocol, window_days)
    result = tune(
        engine,
        name,
        data,
        snapshot.descriptor.digest,
        trials=trials,
        budget_seconds=budget_seconds,
        side=side,
        train_overrides=train_overrides,
    )
    return result, record(engine, result.settings())
