"""Full softmax against sampled softmax: accuracy on Amazon Toys, memory against catalogue size.

(a) Accuracy. SASRec on the Amazon Toys file (leave-last-out, the S3-Rec line's 50-item
window, SASRec's training defaults otherwise), trained twice with the same seed and the same
budget: ``loss=ce`` (the full softmax, the default) and ``loss=sampled num_negatives=256``
(uniform negatives shared by the batch). Test NDCG@10 and HR@10 by full ranking (seen items
excluded) with bootstrap 95% CIs, the ratio sampled / full with its bootstrap CI (same user
resamples), and the paired difference. Target: the ratio at least 0.95.

(b) Memory. One loss step (forward and backward) on synthetic hidden states of N positions
(D = 64) for catalogues of 10k, 100k and 1M items, for both losses: the peak bytes of the
tensors the step creates (counted per op by a dispatch mode, so other processes and the
allocator's caches do not blur it), the part of it that is the item embeddings' gradient
(I + 1) x D (dense in both: any optimiser of dense embeddings holds it), the largest tensor
and the step's median time. The peak resident set above the start of the step is shown
beside it as a cross-check (Linux). The full softmax at 1M items needs about 12 GiB.

    .venv/bin/python benchmarks/sampled_softmax.py                # about 15 minutes
    .venv/bin/python benchmarks/sampled_softmax.py --part memory   # about 4 minutes
    .venv/bin/python benchmarks/sampled_softmax.py --part accuracy --sampled-set \
        sampler=popularity --sampled-set num_negatives=1024 --name sampled_softmax-pop1024

The data folder is ``--data-root``, else ``RECSYS_DATASETS``, else ``../shared/data`` beside
the checkout; it holds ``amazon-toys-s3rec/Amazon_Toys_and_Games.txt``.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import REPO_ROOT, format_table, machine_info, write_results
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from recsys.data.splits import Split, split
from recsys.evaluation import EvalResult, compare
from recsys.experiment import evaluate_on_test
from recsys.metrics import bootstrap_means
from recsys.models import build_model, parse_settings, spec
from recsys.models.losses import LossSpec, NextItemLoss
from recsys.training import TrainConfig, set_threads, train, train_config_with

DATASET = "amazon-toys-s3rec/Amazon_Toys_and_Games.txt"
MODEL = "sasrec"
MODEL_SETTINGS = ["max_len=50"]  # the Amazon Toys window of benchmarks/quality.py and peers
LOSSES = {"full": ["loss=ce"], "sampled": ["loss=sampled", "num_negatives=256"]}
TARGET_RATIO = 0.95
DIM = 64


def data_root(given: Path | None) -> Path:
    if given is not None:
        return given
    return Path(os.environ.get("RECSYS_DATASETS") or REPO_ROOT.parent / "shared" / "data")


def load_split(root: Path) -> Split:
    """Import the Amazon Toys file into a scratch SQLite store, extract, split leave-last-out."""
    from recsys.data.extract import extract
    from recsys.data.importers import import_sequences
    from recsys.data.ingest import ingest
    from recsys.db.engine import create_engine
    from recsys.db.migrate import upgrade

    path = root / DATASET
    if not path.exists():
        sys.exit(f"dataset not found: {path} (pass --data-root or set RECSYS_DATASETS)")
    with tempfile.TemporaryDirectory(prefix="recsys_sampled_") as home:
        url = f"sqlite:///{Path(home) / 'recsys.db'}"
        upgrade(create_engine(url))
        engine = create_engine(url)
        ingest(engine, import_sequences(path), Path(home) / "rejects")
        engine.dispose()
        snapshot = extract(create_engine(url))
    return split(snapshot, "loo")


def train_once(
    data: Split, loss: str, settings: list[str], budget: float, seed: int, threads: int
) -> tuple[dict[str, Any], EvalResult]:
    config, overrides = parse_settings(MODEL, [*MODEL_SETTINGS, *settings], TrainConfig)
    overrides |= {"budget_seconds": budget, "seed": seed, "threads": threads, "progress": False}
    train_config = train_config_with(spec(MODEL).train_defaults, overrides)
    torch.manual_seed(seed)
    model = build_model(MODEL, data.num_users, data.num_items, config=config)
    started = time.perf_counter()
    result = train(model, data, train_config)
    test = evaluate_on_test(model, data, result.device)
    epochs = result.epochs_run
    row = {
        "loss": loss,
        "settings": [*MODEL_SETTINGS, *settings],
        "metrics": test.summary(),
        "epochs": epochs,
        "best_epoch": result.best_epoch,
        "stopped": result.stopped,
        "best_valid": result.best_valid,
        "train_seconds": result.seconds,
        "seconds_per_epoch": result.seconds / max(epochs, 1),
        "seconds_to_best": result.seconds_to_best,
        "wall_seconds": time.perf_counter() - started,
        "epoch_losses": [e.loss for e in result.history],
        "epoch_valid": [e.valid for e in result.history],
    }
    return row, test


def ratio_interval(full: EvalResult, sampled: EvalResult, metric: str) -> tuple[float, float]:
    """95% bootstrap interval of mean(sampled) / mean(full) over the same user resamples."""
    means = bootstrap_means(np.stack([full.per_user[metric], sampled.per_user[metric]]))
    low, high = np.quantile(means[1] / means[0], [0.025, 0.975])
    return float(low), float(high)


def accuracy(args: argparse.Namespace) -> tuple[dict[str, Any], list[Any], list[str]]:
    data = load_split(data_root(args.data_root))
    print(f"Amazon Toys loo: {data.num_users:,} users, {data.num_items:,} items", flush=True)
    rows, tests = [], {}
    sampled = dict(item.split("=", 1) for item in [*LOSSES["sampled"], *args.sampled_set])
    runs = {"full": LOSSES["full"], "sampled": [f"{k}={v}" for k, v in sampled.items()]}
    for loss, settings in runs.items():
        print(f"training {MODEL} {' '.join(settings)}, {args.budget_seconds:.0f} s ...", flush=True)
        row, tests[loss] = train_once(
            data, loss, settings, args.budget_seconds, args.seed, args.threads
        )
        rows.append(row)
        print("  " + " | ".join(_accuracy_cells(row)), flush=True)
    ndcg = {loss: tests[loss].mean("ndcg@10") for loss in LOSSES}
    ratio = ndcg["sampled"] / ndcg["full"]
    low, high = ratio_interval(tests["full"], tests["sampled"], "ndcg@10")
    paired = compare(tests["full"], tests["sampled"], "ndcg@10")
    headers = ["loss", "NDCG@10 [95% CI]", "HR@10 [95% CI]", "epochs", "best", "stopped by"]
    headers += ["s/epoch", "s to best"]
    table = [_accuracy_cells(row) for row in rows]
    verdict = "NOT met"
    if ratio >= TARGET_RATIO:
        verdict = "met" if low >= TARGET_RATIO else "met by the ratio, not by its CI's lower end"
    notes = [
        f"NDCG@10 sampled / full = {ratio:.3f} [95% CI {low:.3f}, {high:.3f}]; target >= "
        f"{TARGET_RATIO}: {verdict}",
        f"paired difference sampled - full: {paired['diff']:+.4f} [{paired['ci_low']:+.4f}, "
        f"{paired['ci_high']:+.4f}], p = {paired['p_value']:.3g}",
        f"sampled run: {' '.join(runs['sampled'])}",
        f"both runs: seed {args.seed}, {args.threads} thread(s), a budget of "
        f"{args.budget_seconds:.0f} s each (checked after every batch; validation NDCG@10 "
        f"after every epoch, patience 5), {MODEL} training defaults with "
        f"{', '.join(MODEL_SETTINGS)}",
    ]
    payload = {
        "dataset": DATASET.split("/")[0],
        "split": data.description,
        "rows": rows,
        "ratio_ndcg10": ratio,
        "ratio_ndcg10_ci": [low, high],
        "paired": dict(paired),
        "target_ratio": TARGET_RATIO,
    }
    return payload, [("Accuracy: SASRec on Amazon Toys (loo)", headers, table)], notes


def _accuracy_cells(row: dict[str, Any]) -> list[str]:
    return [
        row["loss"],
        _ci(row["metrics"]["ndcg@10"]),
        _ci(row["metrics"]["hr@10"]),
        str(row["epochs"]),
        str(row["best_epoch"]),
        row["stopped"],
        f"{row['seconds_per_epoch']:.1f}",
        f"{row['seconds_to_best']:.0f}",
    ]


def _ci(stats: dict[str, float]) -> str:
    return f"{stats['value']:.4f} [{stats['ci_low']:.4f}, {stats['ci_high']:.4f}]"


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensors created under it that are still alive, op by op, and their peak.

    A storage counts from the op that creates it until its last reference goes; outputs that
    share an input's storage (views, in-place ops) are not new memory. Tensors of ``apart``'s
    shape (the item embeddings' gradient) are also left out of a second peak, ``peak_rest``.
    """

    def __init__(self, apart: tuple[int, ...]) -> None:
        super().__init__()
        self.apart = apart
        self.live: dict[int, tuple[StorageWeakRef, int, bool]] = {}
        self.current = self.current_rest = self.peak = self.peak_rest = self.largest = 0

    def _sweep(self) -> None:
        for key, (ref, size, rest) in list(self.live.items()):
            if ref.expired():
                del self.live[key]
                self.current -= size
                self.current_rest -= size if rest else 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self._sweep()
        inputs = {
            StorageWeakRef(t.untyped_storage()).cdata
            for t in tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            ref = StorageWeakRef(tensor.untyped_storage())
            if ref.cdata in inputs or ref.cdata in self.live:
                continue
            size = tensor.untyped_storage().nbytes()
            rest = tuple(tensor.shape) != self.apart
            self.live[ref.cdata] = (ref, size, rest)
            self.current += size
            self.current_rest += size if rest else 0
            self.largest = max(self.largest, size)
        self.peak = max(self.peak, self.current)
        self.peak_rest = max(self.peak_rest, self.current_rest)
        return out


def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _peak_rss_above_start(step: Any) -> int | None:
    """Peak resident bytes above those at the start of ``step()`` (Linux: VmHWM reset)."""
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    start = _rss_kib("VmRSS")
    step()
    peak = _rss_kib("VmHWM")
    return None if start is None or peak is None else (peak - start) * 1024


def loss_step(kind: str, num_items: int, positions: int, negatives: int) -> dict[str, Any]:
    """Measure forward + backward of one loss on synthetic states for a catalogue size."""
    generator = torch.Generator().manual_seed(0)
    weight = (torch.randn(num_items + 1, DIM, generator=generator) * DIM**-0.5).requires_grad_()
    hidden = torch.randn(positions, DIM, generator=generator).requires_grad_()
    target = torch.randint(1, num_items + 1, (positions,), generator=generator)
    spec_ = LossSpec("ce") if kind == "full" else LossSpec("sampled", negatives)
    objective = NextItemLoss(spec_, num_items)

    def step() -> None:
        weight.grad = hidden.grad = None
        objective(hidden, target, weight).backward()

    torch.manual_seed(0)
    step()  # warm-up: first-call allocations and kernels
    weight.grad = hidden.grad = None
    gc.collect()
    with LiveBytes(apart=(num_items + 1, DIM)) as counter:
        step()
    rss = _peak_rss_above_start(step)
    times: list[float] = []
    while len(times) < 5 and sum(times) < 5.0:
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return {
        "loss": kind,
        "num_items": num_items,
        "positions": positions,
        "num_negatives": negatives if kind == "sampled" else None,
        "peak_bytes": counter.peak,
        "weight_grad_bytes": (num_items + 1) * DIM * 4,
        "peak_without_weight_grad_bytes": counter.peak_rest,
        "largest_tensor_bytes": counter.largest,
        "peak_rss_above_start_bytes": rss,
        "step_seconds": float(np.median(times)),
        "step_repeats": len(times),
    }


def memory(args: argparse.Namespace) -> tuple[dict[str, Any], list[Any], list[str]]:
    set_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    rows = []
    for num_items in sizes:
        for kind in LOSSES:
            row = loss_step(kind, num_items, args.positions, args.negatives)
            rows.append(row)
            print("  " + " | ".join(_memory_cells(row)), flush=True)
    headers = ["loss", "items", "peak", "peak without embedding grad", "largest tensor"]
    headers += ["peak RSS above start", "step ms"]
    table = [_memory_cells(row) for row in rows]
    by = {(r["loss"], r["num_items"]): r for r in rows}
    notes = [
        f"one step = forward + backward of the loss on {args.positions} positions with a target "
        f"(D = {DIM}); sampled: {args.negatives} uniform negatives shared by the step",
        "peak = the most bytes of tensors created by the step alive at once (counted per op); "
        "the embedding gradient, (I + 1) x D x 4 bytes, is part of it for both losses; "
        "'peak without embedding grad' is the peak of every other tensor of the step",
        "peak RSS above start: the resident set's high-water mark during the step above its "
        "size at the start; 0 when the step fit in memory the process already held",
        f"step ms: median of up to 5 steps, {args.threads} thread(s), on a shared machine",
    ]
    if len(sizes) >= 2:
        lo, hi = sizes[0], sizes[-1]
        for kind in LOSSES:
            a, b = by[(kind, lo)], by[(kind, hi)]
            notes.append(
                f"{kind}: {hi // lo}x the items -> peak x"
                f"{b['peak_bytes'] / a['peak_bytes']:.1f}, peak without the embedding gradient "
                f"x{b['peak_without_weight_grad_bytes'] / a['peak_without_weight_grad_bytes']:.2f}"
            )
    payload = {"positions": args.positions, "dim": DIM, "rows": rows}
    return payload, [("Memory of one loss step against catalogue size", headers, table)], notes


def _memory_cells(row: dict[str, Any]) -> list[str]:
    rss = row["peak_rss_above_start_bytes"]
    return [
        row["loss"],
        f"{row['num_items']:,}",
        _bytes(row["peak_bytes"]),
        _bytes(row["peak_without_weight_grad_bytes"]),
        _bytes(row["largest_tensor_bytes"]),
        "-" if rss is None else _bytes(rss),
        f"{row['step_seconds'] * 1000:.1f}",
    ]


def _bytes(value: float) -> str:
    if value <= 0:
        return "0"
    units = ["B", "KiB", "MiB", "GiB"]
    power = min(int(math.log(value, 1024)), len(units) - 1)
    return f"{value / 1024**power:.1f} {units[power]}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=("all", "accuracy", "memory"), default="all")
    parser.add_argument("--data-root", type=Path, help="folder holding amazon-toys-s3rec/")
    parser.add_argument("--budget-seconds", type=float, default=270.0, help="per training run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of both losses (default 1: on two shared cores, two threads made "
        "the sampled step's small ops wait on each other, 8 ms -> 284 ms at 100k items)",
    )
    parser.add_argument("--sizes", default="10000,100000,1000000", help="catalogue sizes")
    parser.add_argument("--positions", type=int, default=1024, help="positions per loss step")
    parser.add_argument("--negatives", type=int, default=256, help="of the memory part")
    parser.add_argument(
        "--sampled-set",
        action="append",
        default=[],
        help="key=value added to the sampled run (e.g. sampler=popularity, num_negatives=1024)",
    )
    parser.add_argument("--name", default="sampled_softmax", help="result file name")
    args = parser.parse_args()

    payload: dict[str, Any] = {}
    tables: list[Any] = []
    notes: list[str] = []
    parts = ("accuracy", "memory") if args.part == "all" else (args.part,)
    for part in parts:
        part_payload, part_tables, part_notes = (accuracy if part == "accuracy" else memory)(args)
        payload[part] = part_payload
        tables += part_tables
        notes += part_notes
    for heading, headers, rows in tables:
        print(f"\n{heading}\n{format_table(headers, rows)}")
    for note in notes:
        print(note)
    info = machine_info(["recsys/models", "recsys/training.py", "benchmarks/sampled_softmax.py"])
    info["torch"] = torch.__version__
    info["threads"] = torch.get_num_threads()
    json_path, md_path = write_results(
        args.name, "Full softmax against sampled softmax", info, payload, tables, notes
    )
    print(f"wrote {json_path}, {md_path}")


if __name__ == "__main__":
    main()
