"""Peer runner for RecBole 1.2.1 (SASRec, GRU4Rec, Caser, MultiVAE, EASE) on a leave-last-out split.

Reads the split that benchmarks/peer_split.py wrote, trains one RecBole model with RecBole's
documented defaults within a wall-clock budget, and writes every test user's top-K item ids to
JSON, which peer_split.evaluate_lists then scores with recsys' own evaluation. It runs in its own
virtualenv (``benchmarks/peers/recbole_env.txt``) and does not import ``recsys``:

    python3.11 -m venv benchmarks/.peers/venvs/recbole
    benchmarks/.peers/venvs/recbole/bin/pip install -r benchmarks/peers/recbole_env.txt
    benchmarks/.peers/venvs/recbole/bin/python benchmarks/peers/recbole_runner.py \\
        --split benchmarks/.peers/ml-100k --model SASRec --budget-seconds 60 --k 20 --out s.json

Data (RecBole's ``benchmark_filename: [train, valid, test]``, nothing re-split or filtered):

- MultiVAE, EASE: the exported atomic files ``recbole/<name>/<name>.{train,valid,test}.inter``,
  copied under a neutral dataset name (RecBole swaps the data path of a dataset called
  ``ml-100k`` for its bundled sample).
- SASRec, GRU4Rec, Caser: RecBole reads benchmark files for sequential models as ready-made
  ``(user, item_id_list, item_id)`` rows and does no augmentation of its own, so the runner
  writes them from ``train.tsv``/``valid.tsv``/``test.tsv`` (file order is event order): one
  training row per training event after a user's first (its previous ``--max-len`` items), a
  validation row (all training items -> the validation target) and a test row (training items
  + validation target -> the test target) per evaluated user, exactly RecBole's own
  augmentation applied to the split.

Training: RecBole's Trainer.fit with full-ranking validation each epoch (NDCG@10, default
``stopping_step``) and its best-checkpoint saving. The budget: the training dataloader ends the
epoch in which ``--budget-seconds`` runs out at that batch (an epoch of RecBole's SASRec or
Caser on ml-100k takes minutes on 2 cores), that partial epoch is validated and checkpointed as
usual, and the epoch callback then stops fit; ``--whole-epochs`` checks only after whole
epochs. The clock starts before the model is built (EASE solves its closed form in the
constructor). Autograd anomaly detection, which importing RecBole's sequential models
(``sine.py``) switches on for the whole process, is switched off again.

Test: the best checkpoint is reloaded. Each test user's input history is train + validation
target: the sequential test rows already hold it, and MultiVAE/EASE get their stored user
histories rebuilt from train + valid (RecBole keeps train only). All items are ranked with
``recbole.utils.case_study.full_sort_scores``; padding and every history item (train +
validation target) are excluded, and ids are mapped back to the external tokens. RecBole's own
full-sort test metrics are kept as ``own_metrics`` for reference; for sequential models RecBole
does not exclude history items there (nor in ``valid_metrics``), unlike the lists.

CPU only; torch threads from ``PEER_THREADS`` (default 2). RecBole's logs, tensorboard files and
checkpoints go to a temporary folder (``--work-dir`` keeps them).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import os
import resource
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import recbole
import torch
import yaml
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.data.interaction import cat_interactions
from recbole.utils import get_model, get_trainer, init_logger, init_seed
from recbole.utils.case_study import full_sort_scores

MODELS = ("SASRec", "GRU4Rec", "Caser", "MultiVAE", "EASE")
SEQUENTIAL = frozenset({"SASRec", "GRU4Rec", "Caser"})
PARTS = ("train", "valid", "test")
DATASET = "peer_split"  # RecBole dataset name; not "ml-100k" (see the module docstring)
EPOCHS = 100_000  # "large": the budget or early stopping ends the run
SEQ_HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token\ttimestamp:float"
# Final config values reported besides the model's own hyper-parameters.
REPORTED = (
    "epochs",
    "train_batch_size",
    "eval_batch_size",
    "learner",
    "learning_rate",
    "weight_decay",
    "train_neg_sample_args",
    "eval_args",
    "eval_step",
    "stopping_step",
    "valid_metric",
    "metrics",
    "topk",
    "seed",
    "reproducibility",
    "benchmark_filename",
    "load_col",
    "alias_of_item_id",
    "MAX_ITEM_LIST_LENGTH",
    "device",
)

Row = tuple[str, str, str]  # user id, item id, timestamp (as in the files)


class BudgetSpent(Exception):
    """Raised from the epoch callback to end Trainer.fit once the budget is spent."""


@dataclass
class EpochWatch:
    """Trainer.fit's per-epoch callback: timings of the validation results and the budget."""

    trainer: Any
    budget_seconds: float
    started: float
    epochs: int = 0
    best_epoch: int | None = None
    seconds_to_best: float | None = None
    history: list[dict[str, float]] = field(default_factory=list)

    def __call__(self, epoch_idx: int, valid_score: float) -> None:
        elapsed = time.perf_counter() - self.started
        self.epochs = epoch_idx + 1
        # RecBole resets cur_step to 0 exactly when this epoch became the best (and was saved).
        if self.trainer.cur_step == 0:
            self.best_epoch, self.seconds_to_best = epoch_idx, elapsed
        self.history.append(
            {"epoch": epoch_idx, "seconds": round(elapsed, 2), "score": float(valid_score)}
        )
        if elapsed >= self.budget_seconds:
            raise BudgetSpent


class BudgetedBatches:
    """The training dataloader, ending the epoch in which the budget runs out at that batch.

    Trainer.fit then validates (and checkpoints) that partial epoch as usual, and EpochWatch
    stops the run. The epoch's first batch always runs.
    """

    def __init__(self, loader: Any, deadline: float) -> None:
        self._loader = loader
        self.deadline = deadline
        self.cut: tuple[int, int] | None = None  # (batches run, batches in an epoch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[Any]:
        for done, batch in enumerate(self._loader):
            if done > 0 and time.perf_counter() >= self.deadline:
                self.cut = (done, len(self._loader))
                return
            yield batch


def read_rows(path: Path) -> list[Row]:
    with path.open(newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        next(reader)
        return [(user, item, stamp) for user, item, stamp in reader]


def atomic_folder(split: Path) -> Path:
    """``split/recbole/<name>`` as written by peer_split.export_split."""
    name = str(json.loads((split / "split.json").read_text())["dataset"])
    return split / "recbole" / name


def write_general(split: Path, folder: Path) -> None:
    source = atomic_folder(split)
    for part in PARTS:
        shutil.copyfile(source / f"{source.name}.{part}.inter", folder / f"{DATASET}.{part}.inter")


def write_sequential(rows: dict[str, list[Row]], folder: Path, max_len: int) -> None:
    """RecBole's sequential benchmark rows: (user, last ``max_len`` items before, target)."""
    histories: dict[str, list[str]] = {}
    lines: dict[str, list[str]] = {part: [] for part in PARTS}

    def line(user: str, history: list[str], item: str, stamp: str) -> str:
        if not history:
            raise SystemExit(f"user {user} has no history before an evaluation target")
        return f"{user}\t{' '.join(history[-max_len:])}\t{item}\t{stamp}\n"

    for user, item, stamp in rows["train"]:
        history = histories.setdefault(user, [])
        if history:
            lines["train"].append(line(user, history, item, stamp))
        history.append(item)
    for part in ("valid", "test"):
        for user, item, stamp in rows[part]:
            lines[part].append(line(user, histories.get(user, []), item, stamp))
        for user, item, _ in rows[part]:
            histories.setdefault(user, []).append(item)
    for part in PARTS:
        text = SEQ_HEADER + "\n" + "".join(lines[part])
        (folder / f"{DATASET}.{part}.inter").write_text(text)


def config_overrides(model: str, seed: int, max_len: int, work: Path) -> dict[str, Any]:
    """What this runner sets on top of RecBole's defaults (overall + model yaml)."""
    columns = ["user_id", "item_id", "timestamp"]
    overrides: dict[str, Any] = {
        "data_path": str(work / "data"),
        "checkpoint_dir": str(work / "saved"),
        "benchmark_filename": list(PARTS),
        "load_col": {"inter": columns},
        "eval_args": {"mode": "full", "order": "TO"},
        "valid_metric": "NDCG@10",
        "topk": [10, 20],
        "epochs": EPOCHS,
        "seed": seed,
        "device": "cpu",
        "gpu_id": "",
        "use_gpu": False,
        "show_progress": False,
        "state": "INFO",
    }
    if model in SEQUENTIAL:
        overrides["load_col"] = {"inter": [*columns, "item_id_list"]}
        overrides |= {
            "alias_of_item_id": ["item_id_list"],  # one id space for the lists and the targets
            "MAX_ITEM_LIST_LENGTH": max_len,
            "loss_type": "CE",
            "train_neg_sample_args": None,
        }
    elif model == "MultiVAE":
        overrides["train_neg_sample_args"] = None  # documented: a non-sampling model
    return overrides


def model_keys(model: str) -> list[str]:
    path = Path(recbole.__file__).parent / "properties" / "model" / f"{model}.yaml"
    return list((yaml.safe_load(path.read_text()) or {}).keys())


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def feed_validation_targets(model: Any, train_ds: Any, valid_ds: Any) -> str:
    """Give a general model the test-time input history train + validation target."""
    history = train_ds.copy(cat_interactions([train_ds.inter_feat, valid_ds.inter_feat]))
    if hasattr(model, "history_item_id"):  # AutoEncoderMixin (MultiVAE)
        model.build_histroy_items(history)
    elif hasattr(model, "interaction_matrix"):  # EASE: scores = X @ B
        model.interaction_matrix = history.inter_matrix(form="csr").astype(np.float32)
    else:
        raise SystemExit(f"do not know how to give {type(model).__name__} a test history")
    return "train + validation target (the model's stored user histories rebuilt)"


def top_k(
    model: Any,
    test_data: Any,
    seen: dict[str, list[str]],
    k: int,
    batch: int = 256,
) -> dict[str, list[str]]:
    """Each test user's top ``k`` external item ids, best first, history items excluded."""
    dataset = test_data._dataset
    uid_field, iid_field = dataset.uid_field, dataset.iid_field
    item_ids: dict[str, int] = dataset.field2token_id[iid_field]
    users = np.unique(dataset.inter_feat[uid_field].numpy())
    lists: dict[str, list[str]] = {}
    for start in range(0, len(users), batch):
        chunk = users[start : start + batch]
        scores = full_sort_scores(chunk, model, test_data)  # padding (and general history) -inf
        if scores.shape[0] != len(chunk):
            raise SystemExit("expected exactly one test row per test user")
        tokens = [str(t) for t in dataset.id2token(uid_field, chunk)]
        for row, token in enumerate(tokens):
            history = [item_ids[item] for item in seen.get(token, [])]
            scores[row, history] = -np.inf
        values, index = torch.topk(scores, k, dim=1)
        for token, row_values, row_index in zip(tokens, values, index, strict=True):
            kept = row_index[torch.isfinite(row_values)].numpy()
            lists[token] = [str(t) for t in dataset.id2token(iid_field, kept)]
    return lists


def check_lists(lists: dict[str, list[str]], rows: dict[str, list[Row]], k: int) -> None:
    test_users = {user for user, _, _ in rows["test"]}
    if set(lists) != test_users:
        missing = len(test_users - set(lists))
        raise SystemExit(f"lists cover {len(lists)} users; {missing} test users missing")
    seen: dict[str, set[str]] = {}
    for part in ("train", "valid"):
        for user, item, _ in rows[part]:
            seen.setdefault(user, set()).add(item)
    for user, ranked in lists.items():
        if len(ranked) != k or len(set(ranked)) != k:
            raise SystemExit(f"user {user}: {len(ranked)} items, expected {k} distinct")
        if seen.get(user, set()) & set(ranked):
            raise SystemExit(f"user {user}: a history item is in the list")


@contextlib.contextmanager
def work_dir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="recbole-") as scratch:
        yield Path(scratch)


def run(args: argparse.Namespace) -> dict[str, Any]:
    split: Path = args.split.resolve()
    rows = {part: read_rows(split / f"{part}.tsv") for part in PARTS}
    seen: dict[str, list[str]] = {}
    for part in ("train", "valid"):
        for user, item, _ in rows[part]:
            seen.setdefault(user, []).append(item)

    with work_dir(args.work_dir) as work, contextlib.chdir(work):  # RecBole logs into ./log
        folder = work / "data" / DATASET
        folder.mkdir(parents=True, exist_ok=True)
        if args.model in SEQUENTIAL:
            write_sequential(rows, folder, args.max_len)
        else:
            write_general(split, folder)
        overrides = config_overrides(args.model, args.seed, args.max_len, work)
        with mock.patch.object(sys, "argv", sys.argv[:1]):  # Config also parses --key=value
            config = Config(model=args.model, dataset=DATASET, config_dict=overrides)
        if str(config["device"]) != "cpu":
            raise SystemExit(f"expected the CPU, RecBole chose {config['device']}")
        init_seed(config["seed"], config["reproducibility"])
        init_logger(config)
        for handler in logging.getLogger().handlers:  # the log file keeps everything
            if not isinstance(handler, logging.FileHandler) and not args.verbose:
                handler.setLevel(logging.WARNING)

        prepare_start = time.perf_counter()
        dataset = create_dataset(config)
        train_data, valid_data, test_data = data_preparation(config, dataset)
        prepare_seconds = time.perf_counter() - prepare_start

        init_seed(config["seed"], config["reproducibility"])
        started = time.perf_counter()
        model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
        # Importing recbole.model.sequential_recommender (its sine.py) switches autograd anomaly
        # detection on for the whole process, a debugging mode that slows training ~2x.
        anomaly_detection_was_on = torch.is_anomaly_enabled()
        torch.autograd.set_detect_anomaly(False)
        trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
        watch = EpochWatch(trainer, args.budget_seconds, started)
        batches = BudgetedBatches(train_data, started + args.budget_seconds)
        try:
            trainer.fit(
                train_data if args.whole_epochs else batches,
                valid_data,
                verbose=True,
                saved=True,
                show_progress=False,
                callback_fn=watch,
            )
            stopped_by = "early_stopping" if watch.epochs < trainer.epochs else "epochs"
        except BudgetSpent:
            stopped_by = "budget"
        train_seconds = time.perf_counter() - started

        predict_start = time.perf_counter()
        checkpoint = torch.load(trainer.saved_model_file, map_location="cpu", weights_only=False)
        model.load_state_dict(checkpoint["state_dict"])
        model.load_other_parameter(checkpoint.get("other_parameter"))
        if args.model in SEQUENTIAL:
            test_input = "train + validation target (the test rows' item lists)"
        else:
            test_input = feed_validation_targets(model, train_data._dataset, valid_data._dataset)
        own_metrics = trainer.evaluate(test_data, load_best_model=False)
        with torch.no_grad():
            lists = top_k(model, test_data, seen, args.k)
        predict_seconds = time.perf_counter() - predict_start
        check_lists(lists, rows, args.k)

        reported = {key: config[key] for key in (*REPORTED, *model_keys(args.model))}
        if args.model in SEQUENTIAL:
            reported["max_seq_length_used"] = int(model.max_seq_length)
        else:
            reported.pop("MAX_ITEM_LIST_LENGTH", None)
            reported.pop("alias_of_item_id", None)
        public = {k: v for k, v in overrides.items() if k not in ("data_path", "checkpoint_dir")}

    return {
        "peer": "recbole",
        "model": args.model,
        "library_version": recbole.__version__,
        "torch_version": torch.__version__,
        "config": jsonable(reported),
        "config_source": "RecBole 1.2.1 defaults",
        "overrides": jsonable(public),
        "budget_seconds": args.budget_seconds,
        "train_seconds": round(train_seconds, 2),
        "seconds_to_best": None
        if watch.seconds_to_best is None
        else round(watch.seconds_to_best, 2),
        "epochs": watch.epochs,
        "last_epoch_batches": None if batches.cut is None else "{}/{}".format(*batches.cut),
        "best_epoch": watch.best_epoch,
        "checkpoint_epoch": int(checkpoint["epoch"]),
        "stopped_by": stopped_by,
        "prepare_seconds": round(prepare_seconds, 2),
        "predict_seconds": round(predict_seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "threads": torch.get_num_threads(),
        "anomaly_detection_switched_off": anomaly_detection_was_on,
        "valid_metrics": jsonable(dict(trainer.best_valid_result or {})),
        "valid_history": watch.history,
        "own_metrics": jsonable(dict(own_metrics or {})),
        "own_metrics_note": "RecBole's full-sort test metrics; for sequential models RecBole "
        "does not exclude history items (valid_metrics likewise); the lists do",
        "test_input": test_input,
        "k": args.k,
        "split": str(split),
        "test_digest": json.loads((split / "split.json").read_text()).get("test_digest"),
        "lists": lists,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--model", choices=MODELS, required=True)
    parser.add_argument("--budget-seconds", type=float, required=True)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument(
        "--whole-epochs", action="store_true", help="check the budget after epochs only"
    )
    parser.add_argument("--work-dir", type=Path, help="keep RecBole's logs and checkpoints here")
    parser.add_argument("--verbose", action="store_true", help="RecBole's log on the console")
    args = parser.parse_args()
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # RecBole's own torch.load
    warnings.filterwarnings("ignore", category=FutureWarning, module="recbole")
    torch.set_num_threads(int(os.environ.get("PEER_THREADS", 2)))
    out: Path = args.out.resolve()

    result = run(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result) + "\n")
    best = result["valid_metrics"].get("ndcg@10")
    print(
        f"{args.model}: {len(result['lists'])} lists of {args.k}, valid ndcg@10 {best}, "
        f"{result['epochs']} epochs ({result['stopped_by']}), best {result['best_epoch']} "
        f"at {result['seconds_to_best']}s, train {result['train_seconds']}s"
    )


if __name__ == "__main__":
    main()
