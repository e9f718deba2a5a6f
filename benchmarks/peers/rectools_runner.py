"""RecTools' SASRec and BERT4Rec on an exported leave-last-out split, as a peer runner.

Runs in its own virtualenv (benchmarks/peers/rectools_env.txt) and never imports recsys. Reads
``train.tsv``, ``valid.tsv`` and ``test.tsv`` of a split made by benchmarks/peer_split.py and
writes every test user's top-K item ids (history excluded) as JSON, scored later by
recsys.evaluation like every other system.

Protocol. The model is fitted on the training events alone (neither valid nor test targets
enter). After every epoch a Lightning callback ranks all known items for each evaluated user
from the training history, excluding that history, through the model's own recommend path, and
computes NDCG@10 and HR@10 on the valid targets (users the model cannot score count as misses);
the best-NDCG@10 weights are kept, and training stops after ``--patience`` epochs without
improvement or once ``--budget-seconds`` of wall time have passed (checked after every batch; a
partial last epoch is validated too), as recsys.training does. RecTools' own validation loop
(``get_val_mask_func`` + ``val_loss``) is not used: it would run a second forward pass over the
same users every epoch, about a third of an epoch's CPU time here, for a loss we do not stop on.
Test lists come from ``model.recommend`` on train + valid, so the valid target is part of the
history, with ``filter_viewed=True``.

Hyper-parameters are RecTools' defaults for each model except ``session_max_len`` (--max-len),
the epoch count (bounded by the budget and patience instead), ``deterministic=True`` with the
seed, and a CPU trainer without progress bar, logger or checkpoints (its folder is a temporary
one). As RecTools does, each epoch trains on one sequence per user, the user's last
``session_max_len + 1`` training events.

    benchmarks/.peers/venvs/rectools/bin/python benchmarks/peers/rectools_runner.py \\
        --split benchmarks/.peers/ml-100k --model sasrec --budget-seconds 90 --k 20 \\
        --out /tmp/rectools-sasrec.json
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import resource
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import rectools
import torch
from rectools import Columns
from rectools.dataset import Dataset
from rectools.models import BERT4RecModel, SASRecModel
from rectools.models.nn.transformers.base import TransformerModelBase

MODELS: dict[str, type[TransformerModelBase[Any]]] = {
    "sasrec": SASRecModel,
    "bert4rec": BERT4RecModel,
}
VALID_K = 10
MAX_EPOCHS = 1000


def read_split(folder: Path, part: str) -> pd.DataFrame:
    """One part of the split as a RecTools interactions frame (string ids, weight 1)."""
    frame = pd.read_csv(
        folder / f"{part}.tsv",
        sep="\t",
        dtype={"user_id": str, "item_id": str, "timestamp": "int64"},
    )
    return pd.DataFrame(
        {
            Columns.User: frame["user_id"].to_numpy(),
            Columns.Item: frame["item_id"].to_numpy(),
            Columns.Weight: 1.0,
            Columns.Datetime: pd.to_datetime(frame["timestamp"], unit="s"),
        }
    )


class ValidateAndBudget(pl.Callback):
    """NDCG@10 / HR@10 on the valid targets each epoch; best weights, patience and budget."""

    def __init__(
        self,
        train: Dataset,
        targets: dict[str, str],
        started: float,
        budget_seconds: float,
        patience: int,
    ) -> None:
        self.train = train
        self.targets = targets
        self.started = started
        self.budget_seconds = budget_seconds
        self.patience = patience
        self.epochs = 0
        self.best: dict[str, float] = {"ndcg@10": -1.0, "hr@10": 0.0}
        self.best_epoch = 0
        self.seconds_to_best = 0.0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, float]] = []
        self.unvalidated = False
        self.stopped = "max_epochs"

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs += 1

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.unvalidated = True
        if self.elapsed() > self.budget_seconds:
            self.stopped = "budget"
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.unvalidated:
            return
        self.record(pl_module)
        if self.stopped == "budget" or self.elapsed() > self.budget_seconds:
            self.stopped = "budget"
            trainer.should_stop = True
        elif self.epochs - self.best_epoch >= self.patience:
            self.stopped = "patience"
            trainer.should_stop = True

    def record(self, pl_module: pl.LightningModule) -> None:
        """Score the current weights and keep them if they are the best so far."""
        metrics = self.evaluate(pl_module)
        self.unvalidated = False
        seconds = self.elapsed()
        self.history.append({"epoch": self.epochs, **metrics, "seconds": seconds})
        if metrics["ndcg@10"] > self.best["ndcg@10"]:
            self.best = metrics
            self.best_epoch = self.epochs
            self.seconds_to_best = seconds
            self.best_state = copy.deepcopy(pl_module.state_dict())

    def evaluate(self, pl_module: pl.LightningModule) -> dict[str, float]:
        """Full ranking of the known items from the training history, history excluded."""
        preparator = pl_module.data_preparator
        users = np.array(sorted(self.targets), dtype=object)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # users without known items: counted as misses
            dataset = preparator.transform_dataset_u2i(self.train, users)
        was_training = pl_module.training
        rec_users, rec_items, _ = pl_module._recommend_u2i(
            user_ids=np.arange(dataset.user_id_map.size),
            recommend_dataloader=preparator.get_dataloader_recommend(dataset, 256),
            sorted_item_ids_to_recommend=preparator.get_known_items_sorted_internal_ids(),
            k=VALID_K,
            dataset=dataset,
            filter_viewed=True,
            torch_device="cpu",
        )
        pl_module.train(was_training)
        external_users = dataset.user_id_map.convert_to_external(rec_users)
        external_items = preparator.item_id_map.convert_to_external(rec_items)
        frame = pd.DataFrame({"user": external_users, "item": external_items})
        frame["rank"] = frame.groupby("user", sort=False).cumcount()
        hits = frame[frame["item"] == frame["user"].map(self.targets)]
        count = len(self.targets)
        return {
            "ndcg@10": float((1.0 / np.log2(hits["rank"].to_numpy() + 2.0)).sum() / count),
            "hr@10": len(hits) / count,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--model", choices=sorted(MODELS), required=True)
    parser.add_argument("--budget-seconds", type=float, required=True)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--patience", type=int, default=5)
    args = parser.parse_args()

    threads = int(os.environ.get("PEER_THREADS", 2))
    torch.set_num_threads(threads)
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    warnings.filterwarnings("ignore", category=FutureWarning, module="rectools")
    warnings.filterwarnings("ignore", message="Ignoring `CatFeaturesItemNet`")  # no features
    warnings.filterwarnings("ignore", message="Pydantic serializer warnings")  # get_config

    train = read_split(args.split, "train")
    valid = read_split(args.split, "valid")
    test_users = pd.read_csv(args.split / "test.tsv", sep="\t", dtype=str)["user_id"].tolist()
    # Valid rows after train rows: RecTools sorts each history stably by time, so a valid target
    # that ties a training event's second stays last, as in the split.
    history = Dataset.construct(pd.concat([train, valid], ignore_index=True))
    train_only = Dataset.construct(train)
    targets = dict(zip(valid[Columns.User], valid[Columns.Item], strict=True))

    pl.seed_everything(args.seed, workers=True, verbose=False)
    overrides: dict[str, Any] = {
        "session_max_len": args.max_len,
        "epochs": MAX_EPOCHS,
        "deterministic": True,
        "verbose": 0,
        "recommend_torch_device": "cpu",
    }
    model = MODELS[args.model](**overrides)
    started = time.perf_counter()
    callback = ValidateAndBudget(train_only, targets, started, args.budget_seconds, args.patience)
    with tempfile.TemporaryDirectory(prefix="rectools-runner-") as scratch:
        # RecTools documents assigning ``_trainer`` to replace its default trainer.
        model._trainer = pl.Trainer(
            max_epochs=MAX_EPOCHS,
            deterministic=True,
            accelerator="cpu",
            devices=1,
            enable_progress_bar=False,
            enable_model_summary=False,
            logger=False,
            enable_checkpointing=False,
            num_sanity_val_steps=0,
            default_root_dir=scratch,
            callbacks=[callback],
        )
        model.fit(train_only)
    # RecTools fits a deep copy of the trainer, and so of the callback.
    assert model.fit_trainer is not None
    fitted = next(c for c in model.fit_trainer.callbacks if isinstance(c, ValidateAndBudget))
    module = model.lightning_model
    if fitted.unvalidated:  # stopped by the budget inside an epoch
        fitted.record(module)
    if fitted.best_state is not None:
        module.load_state_dict(fitted.best_state)
    train_seconds = time.perf_counter() - started

    reco = model.recommend(
        users=test_users,
        dataset=history,
        k=args.k,
        filter_viewed=True,
        on_unsupported_targets="warn",
    )
    reco = reco.sort_values([Columns.User, Columns.Rank], kind="stable")
    grouped = reco.groupby(Columns.User, sort=False)[Columns.Item].agg(list)
    lists = {str(u): [str(i) for i in grouped.get(u, [])] for u in test_users}

    config = model.get_config(simple_types=True)
    config.pop("get_trainer_func", None)
    result = {
        "peer": "rectools",
        "model": args.model,
        "library_version": rectools.__version__,
        "config": {
            "model": config,
            "trainer": {
                "accelerator": "cpu",
                "devices": 1,
                "max_epochs": MAX_EPOCHS,
                "deterministic": True,
                "seed": args.seed,
                "threads": threads,
                "patience": args.patience,
                "valid_metric": "ndcg@10",
            },
        },
        "config_source": (
            f"RecTools {rectools.__version__} {MODELS[args.model].__name__} defaults; overrides: "
            f"session_max_len={args.max_len}, epochs={MAX_EPOCHS} (stopped by budget/patience "
            f"{args.patience} on valid NDCG@10), deterministic=True, seed={args.seed}, CPU "
            "trainer without progress bar/logger/checkpoints"
        ),
        "budget_seconds": args.budget_seconds,
        "train_seconds": round(train_seconds, 2),
        "seconds_to_best": round(fitted.seconds_to_best, 2),
        "epochs": fitted.epochs,
        "best_epoch": fitted.best_epoch,
        "stopped": fitted.stopped,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "valid_metrics": {
            "source": (
                "valid targets (one per evaluated user), full ranking of the model's known items "
                "from the training history, that history excluded; best epoch by ndcg@10"
            ),
            **fitted.best,
        },
        "valid_history": fitted.history,
        "lists": lists,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result) + "\n")
    print(
        f"rectools {args.model}: {len(lists)} lists, {fitted.epochs} epochs, best epoch "
        f"{fitted.best_epoch} valid ndcg@10 {fitted.best['ndcg@10']:.4f} "
        f"hr@10 {fitted.best['hr@10']:.4f}, {train_seconds:.1f}s ({fitted.stopped})"
    )


if __name__ == "__main__":
    main()
