"""Time to quality: wall time from a cold start until the model a run would ship reaches a
target test NDCG@10, for a model with its defaults and with other settings (tuned ones).

The model a run would ship at any moment is its best checkpoint on validation so far (the
training loop keeps it); this script scores that checkpoint on the test set whenever
validation improves, through the loop's ``on_epoch`` hook, and keeps the time spent scoring
out of the clock. The test set picks nothing: it is only read to draw the curve. The target
defaults to 0.0627, published for SASRec with a full softmax on the Amazon Toys file (ELECRec,
Chen et al., SIGIR 2022).

    .venv/bin/python benchmarks/time_to_quality.py --dataset amazon-toys
    .venv/bin/python benchmarks/time_to_quality.py --dataset amazon-toys \\
        --variant tuned:embedding_dim=128,dropout=0.5,learning_rate=0.002
    .venv/bin/python benchmarks/time_to_quality.py --tuned-from sqlite:///HOME/recsys.db

``--variant NAME:k=v,...`` adds a run with those settings (model config or training fields);
``--tuned-from URL`` adds one with the latest settings ``recsys tune`` recorded there.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import format_table, machine_info, write_results
from quality import DATASETS, data_root

from recsys import tuned
from recsys.data.extract import extract
from recsys.data.ingest import ingest
from recsys.data.splits import Split, split
from recsys.db.engine import create_engine
from recsys.db.migrate import upgrade
from recsys.experiment import evaluate_on_test
from recsys.models import build_model, parse_settings, spec
from recsys.training import TrainConfig, train, train_config_with

DEFAULT_TARGET = 0.0627


class _Stop(Exception):
    """Raised from the epoch hook: the target is reached or the budget is spent."""


def run_variant(
    name: str, data: Split, params: dict[str, Any], target: float, budget: float, seed: int
) -> dict[str, Any]:
    """Train ``name`` with ``params`` until its best checkpoint reaches ``target`` on test."""
    model_spec = spec(name)
    config, overrides = tuned.split_params(name, params) if params else (model_spec.config(), {})
    train_config = train_config_with(
        model_spec.train_defaults, {**overrides, "seed": seed, "progress": False}
    )
    torch.manual_seed(seed)  # the initial weights too, as `recsys train` seeds them
    model = build_model(name, data.num_users, data.num_items, config=config)
    started = time.perf_counter()
    scoring = 0.0  # seconds spent scoring checkpoints on test, kept off the clock
    curve: list[dict[str, float]] = []
    best_valid = -1.0
    reached: float | None = None
    last_epoch = 0

    def on_epoch(epoch: int, valid: float) -> None:
        nonlocal scoring, best_valid, reached, last_epoch
        last_epoch = epoch
        clock = time.perf_counter() - started - scoring
        if valid > best_valid:  # a new best checkpoint: the one a run would ship now
            best_valid = valid
            began = time.perf_counter()
            test = evaluate_on_test(model, data, "cpu").mean("ndcg@10")
            scoring += time.perf_counter() - began
            curve.append({"epoch": epoch, "seconds": clock, "valid": valid, "test": test})
            print(f"  epoch {epoch}: {clock:.0f} s, valid {valid:.4f}, test {test:.4f}", flush=True)
            if test >= target and reached is None:
                reached = clock
                raise _Stop
        if clock > budget:
            raise _Stop

    try:
        stopped = train(model, data, train_config, on_epoch=on_epoch).stopped
    except _Stop:
        stopped = "target" if reached is not None else "budget"
    return {
        "params": params,
        "train_config": {k: getattr(train_config, k) for k in ("learning_rate", "batch_size")},
        "curve": curve,
        "reached_seconds": reached,
        "stopped": stopped,
        "epochs": last_epoch,
        "best_test": max((point["test"] for point in curve), default=0.0),
    }


def _variant(text: str, name: str) -> tuple[str, dict[str, Any]]:
    """``NAME:key=value,...`` as a label and flat params (typed as ``--set`` types them)."""
    label, _, settings = text.partition(":")
    pairs = [s.strip() for s in settings.split(",") if s.strip()]
    config, train_values = parse_settings(name, pairs, TrainConfig)
    keys = {pair.partition("=")[0].strip().replace("-", "_") for pair in pairs}
    model_values = {k: getattr(config, k) for k in keys if k not in train_values}
    return label, model_values | train_values


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="amazon-toys")
    parser.add_argument("--model", default="sasrec")
    parser.add_argument("--target", type=float, default=DEFAULT_TARGET)
    parser.add_argument("--budget", type=float, default=600.0, help="seconds per variant")
    parser.add_argument("--variant", action="append", default=[], help="NAME:key=value,...")
    parser.add_argument("--tuned-from", help="database URL holding recsys tune's settings")
    parser.add_argument("--no-defaults", action="store_true", help="skip the defaults run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", help="suffix for the result files")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    variants: list[tuple[str, dict[str, Any]]] = [] if args.no_defaults else [("defaults", {})]
    variants += [_variant(text, args.model) for text in args.variant]
    if args.tuned_from:
        found = tuned.latest(create_engine(args.tuned_from), args.model)
        if found is None:
            sys.exit(f"no tuned settings of {args.model} at {args.tuned_from}")
        variants.append((f"tuned #{found.id}", dict(found.params)))

    relative, importer = DATASETS[args.dataset]
    path = data_root() / relative
    if not path.exists():
        sys.exit(f"dataset not found: {path} (set RECSYS_DATASETS to the folder holding it)")
    with tempfile.TemporaryDirectory(prefix="recsys_ttq_") as home:
        url = f"sqlite:///{Path(home) / 'recsys.db'}"
        upgrade(create_engine(url))
        ingest(create_engine(url), importer(path), Path(home) / "rejects")
        data = split(extract(create_engine(url)), "loo")

    rows = []
    for label, params in variants:
        print(f"{label}: {params or 'the model defaults'}", flush=True)
        measured = run_variant(args.model, data, params, args.target, args.budget, args.seed)
        rows.append({"variant": label, **measured})
    headers = ["variant", "settings", "epochs", "best test ndcg@10", f"s to {args.target}"]
    table = [
        [
            r["variant"],
            ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-",
            str(r["epochs"]),
            f"{r['best_test']:.4f}",
            f"{r['reached_seconds']:.0f}"
            if r["reached_seconds"] is not None
            else f"not within {args.budget:.0f}",
        ]
        for r in rows
    ]
    print()
    print(format_table(headers, table))
    notes = [
        f"{r['variant']}: best checkpoint by epoch (seconds, valid, test): "
        + "; ".join(
            f"{p['epoch']} ({p['seconds']:.0f} s, {p['valid']:.4f}, {p['test']:.4f})"
            for p in r["curve"]
        )
        for r in rows
    ]
    for note in notes:
        print(note)
    name = f"time-to-quality-{args.dataset}-{args.model}" + (f"-{args.tag}" if args.tag else "")
    info = machine_info(["recsys/models", "recsys/training.py"])
    json_path, md_path = write_results(
        name,
        f"Time to quality: {args.model} on {args.dataset}, target test NDCG@10 {args.target}",
        info,
        {"target": args.target, "budget": args.budget, "rows": rows},
        [("Wall time until the best checkpoint reaches the target", headers, table)],
        notes,
    )
    print(f"wrote {json_path}, {md_path}")


if __name__ == "__main__":
    main()
