"""The one training loop: AdamW, early stopping on validation NDCG@10, best weights restored.

Every learned model trains here; ``fit`` models (popularity, EASE) are computed in one call
on the CPU, with EASE's regularisation chosen on the validation targets. Batch models train
and validate on the ``device`` setting (recsys.devices), with bf16 autocast on CUDA unless
``amp=off``, and come back on the CPU. Runs are seeded and deterministic on CPU for a fixed
thread count.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal, Protocol, cast

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from recsys import distributed
from recsys.averaging import WeightAverage, swap_in
from recsys.config import DEVICE_PATTERN, get_settings
from recsys.data.batches import pair_batches, row_batches, sequence_batches
from recsys.data.splits import Split, TrainSet
from recsys.devices import CPU, autocast, autocast_dtype, resolve_device, to_device
from recsys.errors import RecsysError
from recsys.evaluation import evaluate
from recsys.models.base import Recommender, torch_scorer

logger = logging.getLogger(__name__)

# History length used to evaluate models that read any length (bag-of-items models).
EVAL_MAX_LEN = 200

# Called after each epoch of a batch model with (epoch, validation score): the tuner reports
# to its trial there and prunes by raising, which ends the training (the model is put back on
# the CPU) and reaches train()'s caller. The same loop, the same numbers, no second loop.
EpochHook = Callable[[int, float], None]


class SelfTuned(Protocol):
    """A closed-form model that chooses its own regularisation on validation (EASE)."""

    def search(self, train: TrainSet, validate: Callable[[], float]) -> list[Any]: ...


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by every model (each model file suggests its defaults)."""

    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    max_epochs: int = 100
    patience: int = 5
    budget_seconds: float | None = None
    clip_norm: float | None = 5.0
    # Validate and ship an exponential moving average of the weights (torch's AveragedModel)
    # over about this many epochs: after the first epoch, of S steps, each step keeps
    # 1 - 1 / (ema_epochs * S) of the average, and at step n at most (1 + n) / (10 + n) (a
    # warm-up that forgets the initial weights). None: the weights as trained.
    ema_epochs: float | None = None
    # Negatives per event of the "pairs" models; sequence models set theirs in their config.
    num_negatives: int = 4
    seed: int = 0
    threads: int | None = None
    valid_metric: str = "ndcg@10"
    progress: bool = True
    # Sequence models: batches of similar history length (see data.batches.sequence_batches);
    # 1 = plain random batches. Pays off only for models that trim padding (SASRec).
    length_pool: int = 1
    # auto | cpu | cuda | cuda:N; None reads RECSYS_DEVICE (default auto).
    device: str | None = None
    # Mixed precision of the training steps: auto = bf16 autocast on CUDA, off on the CPU.
    amp: Literal["auto", "bf16", "off"] = "auto"

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_epochs", "length_pool"):
            if getattr(self, name) < 1:
                raise RecsysError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.ema_epochs is not None and not self.ema_epochs > 0.0:
            raise RecsysError(f"ema_epochs must be positive, got {self.ema_epochs}")
        if self.device is not None and not DEVICE_PATTERN.fullmatch(self.device.lower()):
            raise RecsysError(f"unknown device {self.device!r}: use auto, cpu, cuda or cuda:N")


@dataclass
class EpochLog:
    epoch: int
    loss: float
    valid: float
    seconds: float


@dataclass
class TrainResult:
    """What a run did: epochs, the best validation score and when it was reached."""

    epochs_run: int
    best_epoch: int
    best_valid: float
    valid_metric: str
    seconds: float
    seconds_to_best: float
    stopped: str
    history: list[EpochLog] = field(default_factory=list)
    chosen: dict[str, float] = field(default_factory=dict)
    # The values a closed-form model's search tried, in order: {"l2", "valid", "seconds"}.
    searched: list[dict[str, float]] = field(default_factory=list)
    device: str = "cpu"  # where the steps ran
    precision: str = "float32"  # of the steps: float32, or bfloat16 under autocast

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def set_threads(threads: int | None) -> int:
    """Intra-op threads: ``threads``, else the ``threads`` setting, else every core.

    Set fewer when other processes share the cores: OpenMP threads that wait on each other
    while the cores are oversubscribed made a small model's epoch 100x slower here.
    """
    count = threads or get_settings().threads or os.cpu_count() or 1
    torch.set_num_threads(count)
    return count


def validate(model: Recommender, split: Split, metric: str = "ndcg@10") -> float:
    """Validation ``metric`` of ``model`` scored where it is (the training device)."""
    result = evaluate(
        torch_scorer(model),
        split.valid,
        num_items=split.num_items,
        protocol=split.protocol,
        ks=(10,) if metric.endswith("@10") else (10, 20),
        max_len=model.max_len or EVAL_MAX_LEN,
    )
    return float(result.mean(metric))


def train(
    model: Recommender,
    split: Split,
    config: TrainConfig | None = None,
    *,
    on_epoch: EpochHook | None = None,
    validating: bool = True,
) -> TrainResult:
    """Train ``model`` on ``split.train``, early-stopping on ``split.valid``.

    Batch models train on ``config.device`` and are returned on the CPU with the best
    weights, so export and registration never see another device. ``on_epoch`` hears each
    epoch's validation score (see :data:`EpochHook`); ``fit`` models have no epochs.
    Without ``validating`` (a refit: see :func:`recsys.experiment.refit`) nothing is scored:
    a batch model runs ``config.max_epochs`` epochs and keeps the last weights, a ``fit``
    model fits once with the regularisation its config holds.
    """
    config = config or TrainConfig()
    set_threads(config.threads)
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    device = resolve_device(config.device)
    if model.batch_kind == "fit":
        return _fit(model, split, config, started, validating)
    precision = autocast_dtype(config.amp, device)
    model.prepare_training(split.train)
    model.to(device)
    try:
        result = _epochs(model, split, config, started, device, precision, on_epoch, validating)
    finally:
        model.to(CPU)
    model.eval()
    return result


def _epochs(
    model: Recommender,
    split: Split,
    config: TrainConfig,
    started: float,
    device: torch.device,
    precision: torch.dtype | None,
    on_epoch: EpochHook | None = None,
    validating: bool = True,
) -> TrainResult:
    """The epochs of a batch model already on ``device``; loads the best weights at the end
    (without ``validating``: every epoch, no score, the last weights kept)."""
    rng = np.random.default_rng(config.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    average = WeightAverage(model, config.ema_epochs) if config.ema_epochs else None
    best_state = _cpu_copy(model) if validating else {}
    best_valid, best_epoch, seconds_to_best = -1.0, 0, 0.0
    history: list[EpochLog] = []
    stopped = "max_epochs"
    rank, processes = distributed.world()
    step = distributed.loss_function(model)  # DDP-wrapped in a process group of several
    bar = tqdm(
        total=config.max_epochs,
        disable=not config.progress or rank > 0,
        unit="epoch",
        desc=type(model).__name__,
    )
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        losses: list[float] = []
        out_of_time = False
        for cpu_batch in distributed.shard(_batches(model, split, config, rng), rank, processes):
            batch = to_device(cpu_batch, device)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, precision):
                loss = step(batch)
            if "weight" in batch:  # length-grouped batches: see sequence_batches
                loss = loss * batch["weight"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{type(model).__name__}: loss became {loss.item()}")
            loss.backward()  # type: ignore[no-untyped-call]
            if config.clip_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
            optimizer.step()
            if average is not None:
                average.update(model)
            losses.append(float(loss.detach()))
            if config.budget_seconds and distributed.any_rank(
                time.perf_counter() - started > config.budget_seconds
            ):
                out_of_time = True
                break
        swap_in(model, average)  # the average, where there is one, is validated and kept
        # Rank 0 validates; every rank takes its score, so all stop at the same epoch.
        valid = (
            distributed.agreed_score(
                validate(model, split, config.valid_metric) if rank == 0 else 0.0
            )
            if validating
            else float("nan")
        )
        elapsed = time.perf_counter() - started
        history.append(EpochLog(epoch, float(np.mean(losses)) if losses else 0.0, valid, elapsed))
        if not validating:
            best_epoch, seconds_to_best = epoch, elapsed
        elif valid > best_valid:
            best_valid, best_epoch, seconds_to_best = valid, epoch, elapsed
            best_state = _cpu_copy(model)
        bar.update(1)
        bar.set_postfix(loss=f"{history[-1].loss:.4f}", valid=f"{valid:.4f}", best=best_epoch)
        # One line per epoch (with its numbers as ``progress``, which the retrain flow shows).
        progress = {
            "model": type(model).__name__,
            "epoch": epoch,
            "max_epochs": config.max_epochs,
            "loss": history[-1].loss,
            "metric": config.valid_metric,
            "valid": valid,
            "best": best_valid,
            "best_epoch": best_epoch,
            "seconds": elapsed,
            "budget_seconds": config.budget_seconds,
        }
        logger.info(
            "%s epoch %d/%d loss %.4f valid %s %.4f (best %.4f at %d), %.0f s",
            *(progress[k] for k in ("model", "epoch", "max_epochs", "loss", "metric", "valid")),
            best_valid,
            best_epoch,
            elapsed,
            extra={"progress": progress},
        )
        if average is not None:
            average.epoch_done()
        try:
            if on_epoch is not None:  # hears the weights just validated
                on_epoch(epoch, valid)
        finally:
            swap_in(model, average)  # back to the weights being trained
        if out_of_time:
            stopped = "budget"
            break
        if epoch - best_epoch >= config.patience:
            stopped = "patience"
            break
    bar.close()
    if validating:
        model.load_state_dict(best_state)
    else:
        swap_in(model, average)
    return TrainResult(
        epochs_run=len(history),
        best_epoch=best_epoch,
        best_valid=best_valid,
        valid_metric=config.valid_metric,
        seconds=time.perf_counter() - started,
        seconds_to_best=seconds_to_best,
        stopped=stopped,
        history=history,
        device=str(device),
        precision=str(precision or torch.float32).removeprefix("torch."),
    )


def _cpu_copy(model: Recommender) -> dict[str, Tensor]:
    """A copy of the weights on the CPU (the best epoch's, kept off the training device)."""
    return {name: t.detach().to(CPU, copy=True) for name, t in model.state_dict().items()}


def _batches(
    model: Recommender, split: Split, config: TrainConfig, rng: np.random.Generator
) -> Iterator[dict[str, Tensor]]:
    if model.batch_kind == "sequence":
        assert model.max_len is not None, "sequence models declare max_len"
        return sequence_batches(
            split.train, config.batch_size, model.max_len, rng, pool=config.length_pool
        )
    if model.batch_kind == "pairs":
        return pair_batches(
            split.train, config.batch_size, split.num_items, config.num_negatives, rng
        )
    if model.batch_kind == "rows":
        return row_batches(split.train, config.batch_size, split.num_items, rng)
    raise ValueError(f"unknown batch kind {model.batch_kind!r}")


def _fit(
    model: Recommender, split: Split, config: TrainConfig, started: float, validating: bool = True
) -> TrainResult:
    """Closed-form models: fit once, or let the model search its regularisation on validation
    (each value tried is an entry of the history, the model keeps the best)."""
    chosen: dict[str, float] = {}
    searched: list[dict[str, float]] = []
    if not validating:
        model.fit(split.train)
        history = [EpochLog(1, 0.0, float("nan"), 0.0)]
    elif getattr(model, "search", None) is not None and cast(Any, model).config.l2 is None:

        def validate_as_it_stands() -> float:
            return validate(model, split, config.valid_metric)

        trials = cast(SelfTuned, model).search(split.train, validate_as_it_stands)
        history = [
            EpochLog(i + 1, 0.0, trial.valid, trial.seconds) for i, trial in enumerate(trials)
        ]
        chosen = {"l2": float(cast(Any, model).config.l2)}
        searched = [
            {"l2": trial.l2, "valid": trial.valid, "seconds": trial.seconds} for trial in trials
        ]
    else:
        model.fit(split.train)
        history = [EpochLog(1, 0.0, validate(model, split, config.valid_metric), 0.0)]
    seconds = time.perf_counter() - started
    history[-1].seconds = seconds
    best = history[-1] if not validating else max(history, key=lambda log: log.valid)
    model.eval()
    return TrainResult(
        epochs_run=len(history),
        best_epoch=best.epoch,
        best_valid=best.valid,
        valid_metric=config.valid_metric,
        seconds=seconds,
        seconds_to_best=seconds,
        stopped="fit",
        history=history,
        chosen=chosen,
        searched=searched,
    )


def train_config_with(defaults: dict[str, Any], overrides: dict[str, Any]) -> TrainConfig:
    """TrainConfig from a model's suggested defaults, then the user's overrides."""
    known = {f.name for f in fields(TrainConfig)}
    merged = {k: v for k, v in {**defaults, **overrides}.items() if k in known}
    return replace(TrainConfig(), **merged)
