"""Our side of the peer benchmark: a recsys model on the same split, in the runners' format.

Imports the dataset the way benchmarks/peer_split.py does, checks that its test set is the
exported one (same digest), trains within the budget and writes each test user's top-K
(history excluded) to JSON like the peer runners, so every system is scored by one code path.

    .venv/bin/python benchmarks/peers/recsys_runner.py --dataset ml-100k \\
        --split benchmarks/.peers/ml-100k --model sasrec --budget-seconds 120 --out out.json
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from peer_split import DATASETS, DEFAULT_DATA_ROOT, load_snapshot

from recsys import __version__
from recsys.data.splits import split
from recsys.db.engine import create_engine
from recsys.evaluation import eval_digest, evaluate
from recsys.experiment import train_and_evaluate
from recsys.models import MODELS, parse_settings
from recsys.models.base import torch_scorer
from recsys.training import EVAL_MAX_LEN, TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--model", choices=sorted(MODELS), required=True)
    parser.add_argument("--budget-seconds", type=float, required=True)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--set", action="append", default=[], help="key=value (model/training)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    meta = json.loads((args.split / "split.json").read_text())
    with tempfile.TemporaryDirectory() as scratch:
        snapshot = load_snapshot(args.dataset, args.data_root, Path(scratch))
        data = split(snapshot, "loo")
        if eval_digest(data.test) != meta["test_digest"]:
            raise SystemExit("this import does not reproduce the exported split's test set")
        model_config, overrides = parse_settings(args.model, args.set, TrainConfig)
        overrides = {"budget_seconds": args.budget_seconds, "progress": False, **overrides}
        started = time.perf_counter()
        outcome = train_and_evaluate(
            create_engine(f"sqlite:///{Path(scratch) / 'recsys.db'}"),
            args.model,
            "loo",
            model_config=model_config,
            train_overrides=overrides,
            snapshot=snapshot,
            data=data,
        )
        wall = time.perf_counter() - started
    model = outcome.model
    ranked = evaluate(
        torch_scorer(model),
        data.test,
        num_items=data.num_items,
        protocol="loo",
        ks=(args.k,),
        max_len=model.max_len or EVAL_MAX_LEN,
        keep_topk=True,
    )
    assert ranked.topk is not None
    users, items = snapshot.users.ids, snapshot.items.ids
    lists = {
        str(users[u]): [str(items[i]) for i in row if i > 0]
        for u, row in zip(data.test.users.tolist(), ranked.topk.tolist(), strict=True)
    }
    result = {
        "peer": "recsys",
        "model": args.model,
        "library_version": __version__,
        "config": {"model": str(outcome.to_dict()["params"]), "train": str(overrides)},
        "config_source": "recsys defaults (recsys.models train defaults) plus the budget"
        + (f"; overrides: {', '.join(args.set)}" if args.set else ""),
        "budget_seconds": args.budget_seconds,
        "train_seconds": round(outcome.training.seconds, 2),
        "seconds_to_best": round(outcome.training.seconds_to_best, 2),
        "wall_seconds": round(wall, 2),
        "epochs": outcome.training.epochs_run,
        "best_epoch": outcome.training.best_epoch,
        "stopped": outcome.training.stopped,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "valid_metrics": {"ndcg@10": outcome.training.best_valid},
        "lists": lists,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result) + "\n")
    print(f"{args.model}: {len(lists)} lists, best valid {outcome.training.best_valid:.4f}")


if __name__ == "__main__":
    main()
