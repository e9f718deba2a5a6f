"""Scale: the whole path at a million users, one table of wall time and peak memory per stage.

Two synthetic worlds, each in a scratch PostgreSQL database of its own:

- **main** (default 1M users, 100k items, 20M events): generate (``recsys.data.synthetic``,
  written to Parquet), import into PostgreSQL (``recsys.data.ingest``, as ``recsys import``
  loads), extract, split (leave-last-out; validation and test on a seeded sample of users,
  ``--eval-users``), train SASRec with the sampled softmax for a fixed budget
  (``--train-seconds``), evaluate on the sampled test users with bootstrap CIs, export to ONNX
  and register (parity check; exact scoring below ``RECSYS_ANN_MIN_ITEMS``), serve it
  (``bentoml serve`` of the prediction API, wrk at concurrency 8 on ``/recommend``) and score
  every user in batch (``recsys.batch.batch_recommend``: onnxruntime, top-k inside the graph,
  the ``recommendations`` table replaced in one transaction).
- **big** (default 100k users, 1M items, 3M events): the same path up to serving, with a short
  training budget: at 1M items registration exports the user encoder and builds the item index
  (its recall@10 against exact scoring is checked on real test users), and the service answers
  through the index. The item vectors are those of a briefly trained model on synthetic data.

Every stage runs in a process of its own (or, inside the train-evaluate-register process, with
the peak reset between stages through ``/proc/self/clear_refs``), so its peak RSS is its own.
The server's memory is the sum of its processes' peaks. The machine's float32 matrix-multiply
rate is measured in the same run, and batch scoring is reported as a share of it: useful flops
are ``users x items x 2D`` (the final product of every user's vector with every item).

Targets on a 2-core, 24 GiB machine: no stage above 12 GB; extraction of 20M events <= 3 GB;
``recommend`` p99 <= 50 ms at concurrency 8 at 100k items (exact) and 1M items (index); batch
scoring >= 50% of the measured matrix-multiply rate. A measurement, not a test: it exits 0
whatever the verdict. The full run takes about 30 minutes; ``--quick`` runs a small version of
every stage in a few minutes (for a smoke test, not for the targets).

    .venv/bin/python benchmarks/scale.py
    .venv/bin/python benchmarks/scale.py --quick --name scale-quick
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
from _common import (
    REPO_ROOT,
    format_table,
    machine_info,
    scratch_database,
    verdict,
    write_results,
)

LINUX_PEAK_RESET = Path("/proc/self/clear_refs")
RESULT_PREFIX = "SCALE_RESULT "
GB = 1e9
SOURCES = (
    "recsys/data/synthetic.py",
    "recsys/data/load.py",
    "recsys/data/extract.py",
    "recsys/data/splits.py",
    "recsys/models/sasrec.py",
    "recsys/models/losses.py",
    "recsys/training.py",
    "recsys/export.py",
    "recsys/batch.py",
    "recsys/ranking.py",
    "recsys/ann.py",
    "serving/scorer.py",
    "serving/lifecycle.py",
)
TARGET_STAGE_GB = 12.0
TARGET_EXTRACT_GB = 3.0
TARGET_P99_MS = 50.0
TARGET_MATMUL_SHARE = 0.5
CONCURRENCY = 8
SERVABLE = "ready"  # recsys.registry.SERVABLE (not imported: the parent stays light)
# What a child stage is given (the rest of the options are the parent's).
CHILD_OPTIONS = (
    "url", "work", "home", "users", "items", "events", "seed", "eval_users", "max_len",
    "negatives", "batch_size", "train_seconds", "ann_min_items", "batch_score_size",
    "matmul_size",
)  # fmt: skip


# Peak memory ---------------------------------------------------------------------------------


def reset_peak() -> None:
    """Start this process's peak RSS (VmHWM) afresh from its current RSS (Linux)."""
    LINUX_PEAK_RESET.write_text("5")


def peak_bytes(pid: int | str = "self") -> int:
    """VmHWM of a process: its peak resident set since start or the last reset."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc status (not Linux?)")


@contextmanager
def stage(name: str, rows: list[dict[str, Any]], **detail: Any) -> Iterator[dict[str, Any]]:
    """Time one stage inside a child and record its own peak RSS; ``detail`` is filled in."""
    reset_peak()
    print(f"[{name}] ...", flush=True)
    started = time.perf_counter()
    row: dict[str, Any] = {"stage": name, **detail}
    yield row
    row["seconds"] = time.perf_counter() - started
    row["peak_rss"] = peak_bytes()
    rows.append(row)
    print(f"[{name}] {row['seconds']:.1f}s, peak RSS {row['peak_rss'] / GB:.2f} GB", flush=True)


def emit(result: Any) -> None:
    print(RESULT_PREFIX + json.dumps(result, default=str), flush=True)


# Children ------------------------------------------------------------------------------------


def child_matmul(args: argparse.Namespace) -> None:
    """The machine's float32 GEMM rate (all threads), best of 3, in GFLOP/s."""
    import torch

    size = args.matmul_size
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    best = min(_timed(lambda: a @ b) for _ in range(3))
    emit({"gflops": 2 * size**3 / best / 1e9, "size": size, "threads": torch.get_num_threads()})


def _timed(run: Any) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def child_generate(args: argparse.Namespace) -> None:
    from recsys.data.synthetic import SyntheticConfig, generate

    config = SyntheticConfig(args.users, args.items, args.events, seed=args.seed)
    batch = generate(config)
    folder = Path(args.work)
    folder.mkdir(parents=True, exist_ok=True)
    batch.interactions.to_parquet(folder / "interactions.parquet", index=False)
    batch.items.to_pickle(folder / "items.pkl")
    batch.users.to_pickle(folder / "users.pkl")
    emit({"events": len(batch.interactions), "users": len(batch.users), "items": len(batch.items)})


def child_import(args: argparse.Namespace) -> None:
    import pandas as pd

    from recsys.data.frames import ImportBatch
    from recsys.data.ingest import ingest
    from recsys.db.engine import create_engine
    from recsys.db.migrate import upgrade

    folder = Path(args.work)
    engine = create_engine(args.url)
    upgrade(engine)
    interactions = pd.read_parquet(folder / "interactions.parquet")
    batch = ImportBatch(
        kind="synthetic",
        source="benchmarks/scale.py",
        interactions=interactions,
        items=pd.read_pickle(folder / "items.pkl"),
        users=pd.read_pickle(folder / "users.pkl"),
        rows_read=len(interactions),
    )
    del interactions
    result = ingest(engine, batch, folder / "rejects")
    emit({"inserted": result.rows_inserted, "rows_read": batch.rows_read})


def child_pipeline(args: argparse.Namespace) -> None:
    """Extract, split, train, evaluate, export and register in one process, stage by stage."""
    import torch

    from recsys import registry
    from recsys.data.extract import extract
    from recsys.data.splits import sample_users, split
    from recsys.data.validation import quality_report
    from recsys.db.engine import create_engine
    from recsys.experiment import Outcome, evaluate_on_test
    from recsys.models import build_model, spec
    from recsys.models.sasrec import SASRecConfig
    from recsys.registry import registration
    from recsys.training import train, train_config_with

    engine = create_engine(args.url)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with stage("extract", rows) as row:
        snapshot = extract(engine)
        row["detail"] = f"{snapshot.descriptor.num_interactions:,} events"
    with stage("split", rows) as row:
        quality = quality_report(snapshot)
        data = sample_users(split(snapshot, "loo"), args.eval_users, seed=args.seed)
        row["detail"] = (
            f"{len(data.train.user_idx):,} training events; {len(data.test):,} sampled test users"
        )
    # The model every recorded run of this script measured (SASRec's defaults until 2026-12-07;
    # the defaults since are twice as wide): D = 64, one head, dropout 0.2, rate 3e-3.
    config = SASRecConfig(
        embedding_dim=args.dim,
        num_heads=1,
        dropout=0.2,
        max_len=args.max_len,
        loss="sampled",
        num_negatives=args.negatives,
    )
    train_config = train_config_with(
        spec("sasrec").train_defaults,
        {
            "budget_seconds": args.train_seconds,
            "progress": False,
            "batch_size": args.batch_size,
            "learning_rate": 3e-3,  # the rate of the model above
        },
    )
    with stage("train", rows) as row:
        torch.manual_seed(train_config.seed)
        model = build_model("sasrec", data.num_users, data.num_items, config=config)
        result = train(model, data, train_config)
        row["detail"] = (
            f"{result.epochs_run} epoch(s) (last partial: {result.stopped}), "
            f"valid ndcg@10 {result.best_valid:.4f}"
        )
    with stage("evaluate", rows) as row:
        test = evaluate_on_test(model, data, result.device)
        summary = test.summary()
        ndcg = summary["ndcg@10"]
        row["detail"] = (
            f"ndcg@10 {ndcg['value']:.4f} [{ndcg['ci_low']:.4f}, {ndcg['ci_high']:.4f}] "
            f"on {test.num_users:,} users"
        )
    outcome = Outcome(
        name="sasrec",
        model=model,
        model_config=config,
        train_config=train_config,
        split=data,
        training=result,
        test=test,
        snapshot=snapshot,
        quality=quality,
        seconds=time.perf_counter() - started,
    )
    with stage("export + register", rows) as row:
        record = registration.register(
            engine,
            outcome,
            artifacts_dir=Path(args.home) / "artifacts",
            ann_min_items=args.ann_min_items,
        )
        retrieval = (record.parity or {}).get("retrieval")
        row["detail"] = f"v{record.version} {record.status}" + (
            f", index recall@10 {retrieval['recall_at_10']:.3f}" if retrieval else ", exact scoring"
        )
        if record.status == registry.SERVABLE:
            registry.promote(engine, record.version, actor="benchmark", reason="scale benchmark")
    emit(
        {
            "stages": rows,
            "test": {k: summary[k] for k in ("ndcg@10", "hr@10")},
            "training": result.to_dict(),
            "version": record.version,
            "status": record.status,
            "error": record.error,
            "retrieval": retrieval,
            "num_items": data.num_items,
            "num_users": data.num_users,
            "embedding_dim": config.embedding_dim,
        }
    )


def child_batch(args: argparse.Namespace) -> None:
    """``batch_recommend``'s three steps, each timed: prepare (the histories from one
    extraction), score (onnxruntime and the ranking rules), store (the table swap)."""
    import numpy as np

    from recsys import registry
    from recsys.batch import prepare, score_histories, store_batch
    from recsys.db.engine import create_engine

    engine = create_engine(args.url)
    artifact = registry.load_artifact(engine, registry.CHAMPION, threads=os.cpu_count())
    started = time.perf_counter()
    users = prepare(artifact, engine)
    prepared = time.perf_counter() - started
    scored = score_histories(artifact, users, 10, args.batch_score_size)
    scoring = time.perf_counter() - started - prepared
    result = store_batch(engine, artifact, users.user_ids, scored, prepared + scoring)
    lengths = np.diff(users.histories.offsets)
    windows = np.minimum(lengths, artifact.max_len).astype(np.float64)
    params = artifact.config.get("params", {})
    emit(
        {
            **result.to_dict(),
            "num_items": artifact.num_items,
            "prepare_seconds": prepared,
            "scoring_seconds": scoring,
            "window_sum": float(windows.sum()),
            "window_square_sum": float((windows**2).sum()),
            "embedding_dim": params.get("embedding_dim"),
            "num_blocks": params.get("num_blocks"),
        }
    )


def forward_flops(batch: dict[str, Any]) -> tuple[float, float]:
    """SASRec's flops to score every user: (product with every item, whole forward pass).

    The product: 2 x D x I per user. The encoder over each user's window of w positions, per
    block: the Q, K, V and output projections and the two-layer point-wise feed-forward
    (6 D² multiply-adds per position) and attention (2 w² D); counted as 2 flops each.
    """
    dim, blocks, items = batch["embedding_dim"], batch["num_blocks"], batch["num_items"]
    product = 2.0 * dim * items * batch["users"]
    per_block = 6 * dim**2 * batch["window_sum"] + 2 * dim * batch["window_square_sum"]
    encoder = 2.0 * blocks * per_block
    return product, product + encoder


CHILDREN = {
    "matmul": child_matmul,
    "generate": child_generate,
    "import": child_import,
    "pipeline": child_pipeline,
    "batch": child_batch,
}


def run_child(name: str, args: argparse.Namespace, **values: Any) -> tuple[Any, float, int]:
    """Run one child stage; its result, wall seconds and peak RSS (from wait4)."""
    options = {**vars(args), **values}
    command = [sys.executable, __file__, "--child", name]
    for key in CHILD_OPTIONS:
        if options.get(key) is not None:
            command += [f"--{key.replace('_', '-')}", str(options[key])]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    result = None
    for line in process.stdout:
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line.removeprefix(RESULT_PREFIX))
        else:
            print(f"  {line}", end="", flush=True)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0 or result is None:
        raise RuntimeError(f"stage {name} failed (exit {os.waitstatus_to_exitcode(status)})")
    return result, seconds, usage.ru_maxrss * 1024


# Serving -------------------------------------------------------------------------------------


def measure_serving(
    url: str, home: Path, seconds: float, label: str, workers: int = 1
) -> dict[str, Any]:
    """Start the prediction API on the home's champion (``recsys serve --workers N``'s
    layout) and load it with wrk at concurrency 8."""
    import serve

    from recsys.cli.runner import serve_env
    from recsys.db.engine import create_engine
    from recsys.keys import READ, create_key

    if serve.WRK is None:
        return {"skipped": "wrk is not installed (apt-get install wrk)"}
    engine = create_engine(url)
    secret, _ = create_key(engine, f"scale-{label}-{os.getpid()}", [READ])
    serve.API_KEY_HEADER["Authorization"] = f"Bearer {secret}"
    users = serve.user_ids(url)
    sample = random.Random(0).sample(users, min(len(users), 100_000))
    users_file = home / "users.txt"
    users_file.write_text("".join(f"{u}\n" for u in sample))
    env = {k: v for k, v in os.environ.items() if k != "RECSYS_MODEL_SOURCE"} | {
        "RECSYS_HOME": str(home),
        "RECSYS_DATABASE_URL": url,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    log = home / "logs" / f"serve-{label}.log"
    target = "serving.service:RecsysService"
    with serve.bentoml_serve(target, serve_env(workers, env), log) as running:
        processes = [psutil.Process(running.process.pid), *serve._descendants(running.process.pid)]
        answer = serve.probe(running.base, serve.VARIANTS["recommend"], sample[:5], 10)
        result = serve.wrk_loop(
            running.base,
            serve.VARIANTS["recommend"],
            users_file,
            serve.WRK_SCRIPT,
            CONCURRENCY,
            warmup=3.0,
            duration=seconds,
            k=10,
            seed=0,
            server_pid=running.process.pid,
        )
        peak = 0
        for process in processes:
            try:
                peak += peak_bytes(process.pid)
            except OSError:
                continue
        model = serve.served_model(running.base)
    point = serve.merge_rounds([result])
    return {
        "workers": workers,
        "startup_s": running.startup_s,
        "requests": point.requests,
        "errors": point.errors,
        "rps": point.req_per_s,
        "p50_ms": point.p50_ms,
        "p99_ms": point.p99_ms,
        "server_peak_rss": peak,
        "served": model,
        "probe": {u: items[:3] for u, items in answer.items()},
    }


# Parent --------------------------------------------------------------------------------------


def world(
    args: argparse.Namespace,
    url: str,
    work: Path,
    label: str,
    size: dict[str, int],
    rows: list[dict[str, Any]],
) -> dict[str, Any]:
    """Generate, import, train-evaluate-register and serve one world, appending to ``rows``.

    A stage that fails is recorded (its error in the table) and ends the world, not the run.
    """
    home = work / label
    home.mkdir(parents=True, exist_ok=True)
    common = {"url": url, "work": str(home / "data"), "home": str(home), **size}
    shown = f"{size['users']:,} users, {size['items']:,} items, {size['events']:,} events"
    print(f"== {label}: {shown}", flush=True)
    details: dict[str, Any] = {"size": size}
    try:
        for name in ("generate", "import"):
            result, seconds, rss = run_child(name, args, **common)
            rows.append({"world": label, "stage": name, "seconds": seconds, "peak_rss": rss})
            rows[-1]["detail"] = (
                f"{result['events']:,} events"
                if name == "generate"
                else f"{result['inserted']:,} events stored"
            )
            print(f"[{name}] {seconds:.1f}s, peak RSS {rss / GB:.2f} GB", flush=True)
        budget = args.train_seconds if label == "main" else args.big_train_seconds
        evaluated = args.eval_users if label == "main" else args.big_eval_users
        pipeline, _, _ = run_child(
            "pipeline", args, **common, train_seconds=budget, eval_users=evaluated
        )
    except RuntimeError as exc:
        rows.append({"world": label, "stage": "FAILED", "seconds": 0.0, "detail": str(exc)})
        details["error"] = str(exc)
        return details
    rows += [{"world": label, **r} for r in pipeline["stages"]]
    details["pipeline"] = pipeline
    if pipeline["status"] != SERVABLE:
        details["serving"] = {"skipped": f"v{pipeline['version']} is {pipeline['status']}"}
        return details
    started = time.perf_counter()
    try:
        workers = args.serve_workers if label == "main" else args.big_serve_workers
        served = measure_serving(url, home, args.serve_seconds, label, workers)
    except RuntimeError as exc:
        served = {"skipped": f"the service failed: {exc}"}
    details["serving"] = served
    rows.append(
        {
            "world": label,
            "stage": "serve",
            "seconds": time.perf_counter() - started,
            "peak_rss": served.get("server_peak_rss"),
            "detail": served.get("skipped")
            or (
                f"p50 {served['p50_ms']:.1f} ms, p99 {served['p99_ms']:.1f} ms, "
                f"{served['rps']:.0f} req/s at c={CONCURRENCY}, {served['errors']} errors "
                f"({served['workers']} worker(s))"
            ),
        }
    )
    print(f"[serve] {rows[-1]['detail']}", flush=True)
    return details


def batch_row(
    args: argparse.Namespace, url: str, work: Path, details: dict[str, Any], gflops: float
) -> dict[str, Any]:
    """Score every user of the main world in batch; the row, with the share of the GEMM rate."""
    size = details["main"]["size"]
    try:
        batch, seconds, rss = run_child("batch", args, url=url, home=str(work / "main"), **size)
    except RuntimeError as exc:
        return {"world": "main", "stage": "batch score", "seconds": 0.0, "detail": str(exc)}
    product, forward = forward_flops(batch)
    batch["gflops"] = product / batch["score_seconds"] / 1e9  # end to end, product only
    batch["matmul_share"] = batch["gflops"] / gflops
    batch["scoring_gflops"] = forward / batch["scoring_seconds"] / 1e9
    batch["scoring_matmul_share"] = batch["scoring_gflops"] / gflops
    details["batch"] = batch
    return {
        "world": "main",
        "stage": "batch score",
        "seconds": seconds,
        "peak_rss": rss,
        "detail": (
            f"{batch['users']:,} users: histories {batch['prepare_seconds']:.0f}s, scoring "
            f"{batch['scoring_seconds']:.0f}s ({batch['scoring_gflops']:.0f} GFLOP/s of the "
            f"forward pass = {batch['scoring_matmul_share']:.0%} of the matmul rate; the "
            f"product alone over both steps {batch['matmul_share']:.0%}), writing "
            f"{batch['write_seconds']:.0f}s"
        ),
    }


def main() -> None:
    args = parse_args()
    if args.child:
        CHILDREN[args.child](args)
        return
    info = machine_info(SOURCES)
    load = os.getloadavg()
    info["load_average"] = " ".join(f"{x:.2f}" for x in load)
    info["memory_gb"] = round(psutil.virtual_memory().total / GB, 1)
    main_size = {"users": args.users, "items": args.items, "events": args.events}
    big_size = {"users": args.big_users, "items": args.big_items, "events": args.big_events}
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="recsys_scale_") as scratch:
        work = args.work_dir.resolve() if args.work_dir else Path(scratch)
        matmul, seconds, rss = run_child("matmul", args)
        rows.append(
            {
                "world": "-",
                "stage": "matmul rate",
                "seconds": seconds,
                "peak_rss": rss,
                "detail": f"{matmul['gflops']:.0f} GFLOP/s (float32, {matmul['size']}^2)",
            }
        )
        with database(args) as url:
            details["main"] = world(args, url, work, "main", main_size, rows)
            if details["main"].get("pipeline", {}).get("status") == SERVABLE:
                rows.append(batch_row(args, url, work, details, matmul["gflops"]))
                print(f"[batch score] {rows[-1]['detail']}", flush=True)
        # Written now and again at the end: a run that dies in the big world keeps these.
        report(args, info, rows, details, evaluate_targets(rows, details), matmul)
        if not args.skip_big:
            with database(args) as url:
                details["big"] = world(args, url, work, "big", big_size, rows)
            report(args, info, rows, details, evaluate_targets(rows, details), matmul)


@contextmanager
def database(args: argparse.Namespace) -> Iterator[str]:
    if args.database_url:
        yield args.database_url
        return
    with scratch_database("postgresql") as url:
        yield url


def evaluate_targets(rows: list[dict[str, Any]], details: dict[str, Any]) -> list[list[str]]:
    peak = max(rows, key=lambda r: r.get("peak_rss") or 0)
    failed = [f"{r['world']}: {r['detail']}" for r in rows if r["stage"] == "FAILED"]
    extract = next((r for r in rows if r["world"] == "main" and r["stage"] == "extract"), None)
    targets = [
        [
            f"every stage <= {TARGET_STAGE_GB:g} GB",
            f"{peak['peak_rss'] / GB:.2f} GB ({peak['world']}: {peak['stage']})",
            verdict(peak["peak_rss"] <= TARGET_STAGE_GB * GB),
        ]
    ]
    if extract is not None:
        targets.append(
            [
                f"extraction <= {TARGET_EXTRACT_GB:g} GB",
                f"{extract['peak_rss'] / GB:.2f} GB",
                verdict(extract["peak_rss"] <= TARGET_EXTRACT_GB * GB),
            ]
        )
    if failed:
        targets.append(["every stage completes", "; ".join(failed)[:300], "FAIL"])
    for label, how in (("main", "exact"), ("big", "index")):
        served = details.get(label, {}).get("serving", {})
        items = details.get(label, {}).get("size", {}).get("items", 0)
        name = f"recommend p99 <= {TARGET_P99_MS:g} ms at {items:,} items ({how})"
        if "p99_ms" in served:
            ok = served["p99_ms"] <= TARGET_P99_MS and served["errors"] == 0
            targets.append([name, f"{served['p99_ms']:.1f} ms", verdict(ok)])
        elif label in details:
            targets.append([name, served.get("skipped", "not measured"), "NOT RUN"])
    if "batch" in details:
        batch = details["batch"]
        for name, share in (
            ("scoring (forward pass flops / scoring seconds)", batch["scoring_matmul_share"]),
            ("end to end (product flops / histories + scoring)", batch["matmul_share"]),
        ):
            targets.append(
                [
                    f"batch {name} >= {TARGET_MATMUL_SHARE:.0%} of the matmul rate",
                    f"{share:.0%}",
                    verdict(share >= TARGET_MATMUL_SHARE),
                ]
            )
    return targets


def report(
    args: argparse.Namespace,
    info: dict[str, Any],
    rows: list[dict[str, Any]],
    details: dict[str, Any],
    targets: list[list[str]],
    matmul: dict[str, Any],
) -> None:
    headers = ["world", "stage", "wall s", "peak RSS GB", "detail"]
    table = [
        [
            r["world"],
            r["stage"],
            f"{r['seconds']:.1f}",
            "" if r.get("peak_rss") is None else f"{r['peak_rss'] / GB:.2f}",
            r.get("detail", ""),
        ]
        for r in rows
    ]
    target_headers = ["target", "measured", "verdict"]
    print()
    print(format_table(headers, table))
    print()
    print(format_table(target_headers, targets))
    notes = [
        "peak RSS: each stage's own (a child process's ru_maxrss, or VmHWM reset at the start "
        "of a stage inside the train-evaluate-register process, which holds the snapshot and "
        "the split from the stages before); serve: the sum of the server processes' peaks; "
        "the service runs as `recsys serve --workers N` would, N = --serve-workers (default: "
        "one per core) for the main world and --big-serve-workers (default 1) for the "
        "1M-item one",
        "batch scoring, two ratios against the "
        f"{matmul['gflops']:.0f} GFLOP/s measured for a float32 square matmul in this run: "
        "(1) scoring: the flops of SASRec's forward pass for every user (the encoder over each "
        "user's window, counted per block as 6 D² per position for the projections and the "
        "feed-forward plus 2 w² D for attention, and the product with every item, 2 D I), "
        "over the seconds of the scoring loop (onnxruntime, top-k and the ranking rules); "
        "(2) end to end: the product's flops alone over the seconds of reading the histories "
        "(one extraction) and scoring; the table write is timed apart",
    ]
    write_results(
        args.name,
        "Scale: a million users, stage by stage",
        info,
        {"rows": rows, "details": details, "targets": targets, "matmul": matmul},
        [("Stages", headers, table), ("Targets", target_headers, targets)],
        notes,
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=20_000_000)
    parser.add_argument("--big-users", type=int, default=100_000)
    parser.add_argument("--big-items", type=int, default=1_000_000)
    parser.add_argument("--big-events", type=int, default=3_000_000)
    parser.add_argument("--skip-big", action="store_true", help="only the main world")
    parser.add_argument("--train-seconds", type=float, default=600.0)
    parser.add_argument("--big-train-seconds", type=float, default=120.0)
    parser.add_argument("--eval-users", type=int, default=10_000)
    parser.add_argument(
        "--big-eval-users", type=int, default=2_000, help="at 1M items each costs 100x more"
    )
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--dim", type=int, default=64, help="SASRec's embedding size")
    parser.add_argument("--negatives", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=256, help="training batch size")
    parser.add_argument("--batch-score-size", type=int, default=1024)
    parser.add_argument("--serve-seconds", type=float, default=30.0)
    parser.add_argument(
        "--serve-workers",
        type=int,
        default=os.cpu_count() or 1,
        help="service workers (default: one per core, as the README advises)",
    )
    parser.add_argument(
        "--big-serve-workers",
        type=int,
        default=1,
        help="service workers of the 1M-item world (default 1: each worker holds its own "
        "1M-item model, item vectors and index, 2.3 GB, and two of them share the cores with "
        "the load generator)",
    )
    parser.add_argument("--matmul-size", type=int, default=4096)
    parser.add_argument("--ann-min-items", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--database-url", default=None, help="default: a scratch PG database")
    parser.add_argument("--name", default="scale", help="results/<name>.md and .json")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="keep the homes here (default: removed)"
    )
    parser.add_argument("--quick", action="store_true", help="a small run of every stage")
    # Internal: one stage in a child process.
    parser.add_argument("--child", choices=sorted(CHILDREN), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--url", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--home", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.users, args.items, args.events = 20_000, 5_000, 300_000
        args.big_users, args.big_items, args.big_events = 5_000, 20_000, 100_000
        args.train_seconds, args.big_train_seconds = 20.0, 10.0
        args.eval_users, args.serve_seconds, args.matmul_size = 2_000, 5.0, 1024
        args.big_eval_users = 1_000
        args.ann_min_items = args.ann_min_items or 10_000
    return args


if __name__ == "__main__":
    main()
