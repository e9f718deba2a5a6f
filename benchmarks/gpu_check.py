"""The GPU check's training run: SASRec on Amazon Toys to its best validation epoch, on CUDA.

benchmarks/gpu_check.sh runs this after the CUDA tests, in the offline environment it built
from benchmarks/gpu_check.requirements.txt: nothing here may import what that list lacks
(the SQL store's importers pull pyarrow, so the sequence file is read here, into the very
snapshot that `recsys import sequences` and extraction make of it: same ids, same order,
same digest). Training and test go through recsys.experiment.train_and_evaluate with the
settings of benchmarks/quality.py for SASRec on this file, the training setting
``device=cuda``, early stopping on validation NDCG@10 and a wall-clock budget.

Prints the device, epochs, the best epoch, the seconds to it, test NDCG@10 and HR@10 with
95% CIs and the peak GPU memory, and writes results/gpu_check.{json,md}.

    python benchmarks/gpu_check.py                              # on a CUDA GPU
    python benchmarks/gpu_check.py --device cpu --max-epochs 1  # the path, on a CPU (no files)
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy
import torch
from _common import REPO_ROOT, RESULTS_DIR, format_table, machine_info, write_results

from recsys.data.extract import IdMap, Snapshot, SnapshotDescriptor, _digest
from recsys.data.frames import DEFAULT_EVENT_TYPE
from recsys.data.splits import split
from recsys.errors import RecsysError
from recsys.experiment import train_and_evaluate
from recsys.models import parse_settings
from recsys.training import TrainConfig

TOYS = "amazon-toys-s3rec/Amazon_Toys_and_Games.txt"
TOYS_SHA256 = "176c680c688d497598c4a89a03b402c0fe78d795e5db335c2e78dd5f2d778a3f"
# benchmarks/quality.py's DATASET_SETTINGS and DATASET_TRAIN_SETTINGS for SASRec on this file
# (tests/benchmarks/test_gpu_check.py keeps them equal): its CPU run is the reference row.
# (D=128, dropout 0.5, 2 heads and lr 2e-3 were set here until they became SASRec's defaults.)
SASREC_SETTINGS: dict[str, Any] = {"max_len": 50}
SASREC_TRAIN_SETTINGS: dict[str, Any] = {}
CPU_REFERENCE = RESULTS_DIR / "quality-amazon-toys-loo-sasrec-d128.json"
# recsys.data.importers: a sequence's positions become one-second steps from 2000-01-01.
SEQUENCE_EPOCH_MS = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp() * 1000)
SEQUENCE_STEP_MS = 1000
NO_GPU = "no CUDA GPU here: nothing to check"


def data_root() -> Path:
    return Path(os.environ.get("RECSYS_DATASETS") or REPO_ROOT.parent / "shared" / "data")


def load_sequences(path: Path) -> Snapshot:
    """Lines ``user item item ...`` as the store gives them back after a first import.

    Users and items are indexed in order of first appearance (the keys a first import gives
    them), each user's events in line order. A line without an item or a user listed twice is
    an error here (the importer would reject or merge it; the Toys file has neither).
    """
    users: list[str] = []
    items: list[str] = []
    lengths: list[int] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            tokens = line.split()
            if not tokens:
                continue
            if len(tokens) < 2:
                raise RecsysError(f"{path.name}:{number}: a user without items")
            users.append(tokens[0])
            items.extend(tokens[1:])
            lengths.append(len(tokens) - 1)
    if len(set(users)) != len(users):
        raise RecsysError(f"{path.name}: a user has more than one line")
    item_ids = list(dict.fromkeys(items))
    index = {item: n for n, item in enumerate(item_ids, start=1)}
    count = np.asarray(lengths, dtype=np.int64)
    user_idx = np.repeat(np.arange(1, len(users) + 1, dtype=np.int32), count)
    item_idx = np.fromiter((index[i] for i in items), dtype=np.int32, count=len(items))
    starts = np.repeat(np.cumsum(count) - count, count)
    occurred_at = SEQUENCE_EPOCH_MS + (np.arange(len(items)) - starts) * SEQUENCE_STEP_MS
    columns = {
        "occurred_at": occurred_at.astype(np.int64),
        "event": np.zeros(len(items), dtype=np.int16),
        "value": np.full(len(items), np.nan, dtype=np.float32),
    }
    user_map, item_map = IdMap.from_ids(users), IdMap.from_ids(item_ids)
    event_types = (DEFAULT_EVENT_TYPE,)
    descriptor = SnapshotDescriptor(
        dialect="file",
        extracted_at=datetime.now(UTC).isoformat(timespec="seconds"),
        after_ms=None,
        num_interactions=len(items),
        num_users=len(users),
        num_items=len(item_ids),
        catalogue_users=len(users),
        catalogue_items=len(item_ids),
        event_counts={DEFAULT_EVENT_TYPE: len(items)},
        min_occurred_at_ms=int(occurred_at.min()) if len(items) else None,
        max_occurred_at_ms=int(occurred_at.max()) if len(items) else None,
        max_interaction_id=len(items) or None,
        digest=_digest(user_idx, item_idx, columns, event_types, user_map, item_map),
    )
    return Snapshot(
        user_idx=user_idx,
        item_idx=item_idx,
        occurred_at=columns["occurred_at"],
        value=columns["value"],
        event=columns["event"],
        event_types=event_types,
        users=user_map,
        items=item_map,
        descriptor=descriptor,
    )


def check_file(path: Path, root: Path) -> str:
    """The file's sha256, checked against MANIFEST.json beside the datasets when there is one."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest = root / "MANIFEST.json"
    if manifest.exists():
        listed = {
            f"{entry['path']}{file['file']}": file["sha256"]
            for entry in json.loads(manifest.read_text())["datasets"].values()
            for file in entry.get("files", [])
        }
        wanted = listed.get(str(path.relative_to(root)))
        if wanted and wanted != digest:
            raise RecsysError(f"{path} does not match {manifest.name} (sha256 {digest[:12]}...)")
    return digest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=None, help="holds " + TOYS)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a smoke run")
    parser.add_argument("--budget-seconds", type=float, default=300.0, help="training, wall")
    parser.add_argument("--max-epochs", type=int, help="cap on epochs (default: the model's)")
    parser.add_argument("--set", action="append", default=[], help="key=value, model/training")
    parser.add_argument(
        "--no-results", action="store_true", help="print only (a CPU run never writes)"
    )
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print(NO_GPU)
        return 0
    if "device" not in {f.name for f in dataclasses.fields(TrainConfig)}:
        if cuda:
            print("error: this checkout's TrainConfig has no `device` setting", file=sys.stderr)
            return 2
        print("note: this checkout's TrainConfig has no `device` setting; training on the CPU")

    root = args.data_root or data_root()
    path = root / TOYS
    if not path.exists():
        print(f"error: {path} not found (pass --data-root or set RECSYS_DATASETS)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    digest = check_file(path, root)
    snapshot = load_sequences(path)
    data = split(snapshot, "loo")
    print(
        f"{path.name}: {len(snapshot):,} events, {snapshot.num_users:,} users, "
        f"{snapshot.num_items:,} items; loo split: {data.description}",
        flush=True,
    )

    settings = [f"{k}={v}" for k, v in {**SASREC_SETTINGS, **SASREC_TRAIN_SETTINGS}.items()]
    model_config, overrides = parse_settings("sasrec", settings + args.set, TrainConfig)
    overrides = {"budget_seconds": args.budget_seconds, "progress": False, **overrides}
    if args.max_epochs:
        overrides["max_epochs"] = args.max_epochs
    if "device" in {f.name for f in dataclasses.fields(TrainConfig)}:
        overrides.setdefault("device", args.device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(args.device)
    print(f"training sasrec on {args.device} (budget {args.budget_seconds:g}s) ...", flush=True)
    outcome = train_and_evaluate(
        sqlalchemy.create_engine("sqlite://"),  # never opened: SASRec reads no side features
        "sasrec",
        "loo",
        model_config=model_config,
        train_overrides=overrides,
        snapshot=snapshot,
        data=data,
    )
    wall = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(args.device) if cuda else None
    training, metrics = outcome.training, outcome.test.summary()
    row = {
        "device": torch.cuda.get_device_name(args.device) if cuda else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "epochs": training.epochs_run,
        "best_epoch": training.best_epoch,
        "stopped": training.stopped,
        "seconds_to_best": round(training.seconds_to_best, 1),
        "train_seconds": round(training.seconds, 1),
        "wall_seconds": round(wall, 1),
        "ndcg@10": metrics["ndcg@10"],
        "hr@10": metrics["hr@10"],
        "peak_gpu_mb": None if peak is None else round(peak / 2**20),
        "settings": {**dataclasses.asdict(outcome.model_config), **overrides},
        "data_sha256": digest,
        "snapshot_digest": snapshot.descriptor.digest,
        "history": [dataclasses.asdict(log) for log in training.history],
    }
    headers = ["run", "device", "epochs", "best", "s to best", "NDCG@10 [95% CI]", "HR@10"]
    headers.append("peak GPU MB")
    rows = [_row("this run", row)]
    reference = _cpu_reference() if digest == TOYS_SHA256 else None
    if reference:
        rows.append(reference)
    print()
    print(format_table(headers, rows))
    if training.stopped == "budget":
        print(f"the budget stopped training: {row['seconds_to_best']}s to best is a lower bound")
    if cuda and not peak:
        print("error: no GPU memory was allocated: the model did not train on the GPU")
        return 1
    if cuda and not args.no_results:
        info = machine_info(["benchmarks/gpu_check.py", "recsys/training.py", "recsys/models"])
        notes = [
            "SASRec with benchmarks/quality.py's settings for this file, trained to its best "
            "validation NDCG@10 (patience) or the budget; test by full ranking, seen items "
            "excluded, bootstrap 95% CI.",
            "The CPU row is benchmarks/results/quality-amazon-toys-loo-sasrec-d128.md "
            "(2 cores): the same data, split and settings, through the SQL store.",
        ]
        json_path, md_path = write_results(
            "gpu_check",
            "GPU check: SASRec on Amazon Toys",
            info,
            {"run": row},
            [("Training to the best validation epoch", headers, rows)],
            notes,
        )
        print(f"wrote {json_path.relative_to(REPO_ROOT)}, {md_path.relative_to(REPO_ROOT)}")
    return 0


def _row(name: str, row: dict[str, Any]) -> list[str]:
    ndcg = row["ndcg@10"]
    peak = row.get("peak_gpu_mb")
    return [
        name,
        str(row["device"]),
        str(row["epochs"]),
        str(row["best_epoch"]),
        f"{row['seconds_to_best']:.1f}",
        f"{ndcg['value']:.4f} [{ndcg['ci_low']:.4f}, {ndcg['ci_high']:.4f}]",
        f"{row['hr@10']['value']:.4f}",
        "-" if peak is None else f"{peak:,}",
    ]


def _cpu_reference() -> list[str] | None:
    """The same training on 2 CPU cores, from benchmarks/quality.py's results, if present."""
    if not CPU_REFERENCE.exists():
        return None
    saved = json.loads(CPU_REFERENCE.read_text())
    found = next((r for r in saved.get("rows", []) if r.get("model") == "sasrec"), None)
    if found is None:
        return None
    cores = saved.get("cpu_count")
    return _row(
        "CPU reference",
        {
            "device": f"cpu ({cores} cores)" if cores else "cpu",
            "epochs": found["epochs"],
            "best_epoch": found["best_epoch"],
            "seconds_to_best": found["seconds_to_best"],
            "ndcg@10": found["metrics"]["ndcg@10"],
            "hr@10": found["metrics"]["hr@10"],
        },
    )


if __name__ == "__main__":
    sys.exit(main())
