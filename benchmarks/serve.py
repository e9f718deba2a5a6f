"""Serving throughput and latency: the prediction API under a closed-loop load on loopback.

Each server is a ``bentoml serve`` process with the prediction API's service arguments
(``RecsysService``'s name and config: the same workers, threads and traffic settings). An
async httpx client keeps C requests in flight (C workers, each sending the next request when
the last one returns) for a fixed duration after a warm-up, for each C in ``--concurrency``:

- ``noop`` and ``noop-async``: ``POST /noop`` (a sync endpoint, run in BentoML's worker
  threads) and ``POST /noop_async`` (a coroutine on the event loop) return a constant
  (benchmarks/serve_variants.py:NoopService); the faster is the framework's floor. They get
  the same body as ``/recommend``.
- ``recommend``: ``POST /recommend`` of ``serving.service:RecsysService`` (the champion's ONNX
  graph through onnxruntime), ``{"user_id": ..., "k": 10, "explain": false}``.
- ``explain``: the same with ``"explain": true`` (the same server process as ``recommend``).
- ``naive``: ``POST /recommend`` of benchmarks/serve_variants.py:TorchEagerService, which
  scores with the champion's torch model in eager mode per request.

Users are drawn at random (seeded) from the home's users. Reported per variant and
concurrency: requests, errors, req/s, p50/p95/p99 latency, the CPU used by the client and by
the server's processes (and per request), and the full garbage collections of the server's
workers (count and pauses, from /metrics). The targets are checked at concurrency 8, per
process layout: recommend throughput >= 50% of noop's (80% under ``--client wrk``, where the
client is not the bottleneck), recommend p99 <= 50 ms, recommend >= 2x naive throughput,
explain p50 <= 1.2x recommend p50. A measurement, not a test: the script exits 0 whatever
the verdict.

A process layout is a worker count (``--workers 1,2``: every server started as
``recsys serve --workers N`` would) and a ``RECSYS_SERVE_TUNING`` (``--tuning none
default``); ``--repeat N`` runs all layouts N times in turn and merges their rounds. With
``--client wrk`` the requests come from wrk and benchmarks/serve.lua.

The model is a SASRec champion trained on the Amazon Toys 5-core sequences (about 12k items)
in a home the script prepares (import, a time-boxed training, register, promote); pass
``--home`` to keep that home and reuse it next time (a home with a champion is not retrained).

    .venv/bin/python benchmarks/serve.py --home ~/.cache/recsys-bench/serve-amazon-toys
    .venv/bin/python benchmarks/serve.py --quick --synthetic --home /tmp/bench-serve-smoke

``--quick`` (concurrency 1,8 for 3 s each) writes results/serve-smoke.*; a full run writes
results/serve.json, results/serve.md and results/serve-latency.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import numpy as np
import psutil
from _common import REPO_ROOT, RESULTS_DIR, format_table, machine_info, verdict, write_results
from sqlalchemy import Engine, func, select

from recsys import registry
from recsys.cli.runner import serve_env
from recsys.data.frames import ImportBatch
from recsys.data.importers import import_sequences
from recsys.data.ingest import ingest
from recsys.data.synthetic import SyntheticConfig, generate
from recsys.db.engine import create_engine
from recsys.db.migrate import upgrade
from recsys.db.schema import interactions_table, users_table
from recsys.keys import READ, create_key, revoke_key
from recsys.registry import registration

SOURCES = (
    "serving/service.py",
    "serving/scorer.py",
    "serving/lifecycle.py",
    "recsys/artifacts.py",
    "recsys/ranking.py",
    "benchmarks/serve_variants.py",
    "benchmarks/serve.py",
)
PACKAGES = ("bentoml", "onnxruntime", "torch", "httpx", "uvloop", "httptools")
AMAZON_FILE = "amazon-toys-s3rec/Amazon_Toys_and_Games.txt"
HOME_MARKER = "bench-serve.json"  # how the script prepared a home, read when it is reused
TARGET_CONCURRENCY = 8
# The share of the no-op floor recommend must reach: the Python client caps both near its own
# speed, so under wrk (the server the only bottleneck) the bar is higher.
NOOP_SHARE = 0.5
WRK_NOOP_SHARE = 0.8
ROUND_WARMUP_S = 0.5  # warm-up of the rounds after the first (new connections)
REQUEST_TIMEOUT_S = 30.0  # the service's traffic timeout
# A read key made for the run (the service needs one on every request), revoked after it.
API_KEY_HEADER: dict[str, str] = {}
WRK = shutil.which("wrk")  # Debian/Ubuntu: apt-get install wrk
DEFAULT_TUNING = "default"  # RECSYS_SERVE_TUNING unset: the setting's default
READY_WITHIN_S = 180.0
STOP_WITHIN_S = 30.0
STARTUP_FAILED = "Application startup failed"  # what a bentoml worker logs when __init__ raises
PROBE_USERS = 20
DEFAULT_CONCURRENCY = "1,4,8,16"
QUICK_CONCURRENCY = "1,8"
# Small enough to prepare in seconds, big enough that scoring is not free.
SYNTHETIC = SyntheticConfig(num_users=1000, num_items=2000, num_interactions=30_000, seed=0)
SYNTHETIC_EPOCHS = 3
HEADERS = (
    "variant",
    "workers",
    "tuning",
    "conc",
    "requests",
    "errors",
    "req/s",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "client CPU %",
    "server CPU %",
    "server CPU ms/req",
    "full GCs",
    "GC pause ms",
)
WIDTHS = (10, 7, 24, 5, 9, 7, 8, 8, 8, 8, 13, 13, 17, 8, 11)


@dataclass(frozen=True)
class Server:
    """A ``bentoml serve`` target and the variants measured against one process of it."""

    name: str
    target: str
    variants: tuple[str, ...]


@dataclass(frozen=True)
class Variant:
    name: str
    path: str
    explain: bool
    description: str


SERVERS = (
    Server("noop", "benchmarks/serve_variants.py:NoopService", ("noop", "noop-async")),
    Server("recsys", "serving.service:RecsysService", ("recommend", "explain")),
    Server("torch-eager", "benchmarks/serve_variants.py:TorchEagerService", ("naive",)),
)
VARIANTS = {
    v.name: v
    for v in (
        Variant("noop", "/noop", False, "NoopService: a constant from a sync endpoint"),
        Variant(
            "noop-async",
            "/noop_async",
            False,
            "NoopService: a constant from an async endpoint (no worker-thread hand-over)",
        ),
        Variant("recommend", "/recommend", False, "RecsysService: ONNX champion, explain=false"),
        Variant("explain", "/recommend", True, "RecsysService: ONNX champion, explain=true"),
        Variant("naive", "/recommend", False, "TorchEagerService: torch eager per request"),
    )
}


@dataclass
class Point:
    """One (variant, concurrency) measurement; latencies in ms over successful requests."""

    variant: str
    concurrency: int
    seconds: float
    requests: int
    errors: int
    req_per_s: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    max_ms: float | None
    client_cpu_pct: float
    server_cpu_pct: float | None
    error_samples: list[str] = field(default_factory=list)
    rounds: int = 1
    workers: int = 1
    tuning: str = DEFAULT_TUNING
    full_gcs: float | None = None  # full collections in the server's workers, all rounds

    @property
    def server_cpu_ms(self) -> float | None:
        """The server's CPU per successful request: its cost, whatever else shares the CPU."""
        if self.server_cpu_pct is None or not self.req_per_s:
            return None
        return 10 * self.server_cpu_pct / self.req_per_s

    gc_pause_ms: float | None = None  # their pauses, summed

    def cells(self) -> list[str]:
        return [
            self.variant,
            str(self.workers),
            self.tuning,
            str(self.concurrency),
            f"{self.requests:,}",
            f"{self.errors:,}",
            f"{self.req_per_s:,.1f}",
            _ms(self.p50_ms),
            _ms(self.p95_ms),
            _ms(self.p99_ms),
            f"{self.client_cpu_pct:.0f}",
            "-" if self.server_cpu_pct is None else f"{self.server_cpu_pct:.0f}",
            "-" if self.server_cpu_ms is None else f"{self.server_cpu_ms:.2f}",
            "-" if self.full_gcs is None else f"{self.full_gcs:.0f}",
            "-" if self.gc_pause_ms is None else f"{self.gc_pause_ms:,.0f}",
        ]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _csv_ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _csv_variants(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}"
        )
    return names


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--home",
        type=Path,
        help="recsys home to prepare, or to reuse if it has a champion (default: a temporary one)",
    )
    parser.add_argument("--database-url", help="database of the home (default: SQLite in the home)")
    parser.add_argument(
        "--dataset-path",
        type=Path,
        help=f"the sequences file (default: {{$RECSYS_DATASETS or ../shared/data}}/{AMAZON_FILE})",
    )
    parser.add_argument(
        "--synthetic",
        action="store_true",
        help="prepare the home from a small synthetic dataset instead (for smoke tests)",
    )
    parser.add_argument(
        "--train-seconds",
        type=float,
        default=120.0,
        help="training budget of the SASRec champion when preparing a home (default 120)",
    )
    parser.add_argument(
        "--concurrency",
        type=_csv_ints,
        help=f"comma-separated in-flight request counts (default {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument("--duration", type=float, help="measured seconds per point (default 20)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per point (default 2)")
    parser.add_argument(
        "--variants", type=_csv_variants, default=list(VARIANTS), help="subset, comma-separated"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="measured windows per point, interleaved with the server's other variants "
        "(default 4; --quick 1)",
    )
    parser.add_argument(
        "--client",
        choices=("wrk", "python"),
        default="python",
        help="load generator: the async Python client (httpx; default) or wrk (C, little "
        "client CPU, twice the request rate; see benchmarks/README.md on its tail latencies)",
    )
    parser.add_argument(
        "--workers",
        type=_csv_ints,
        default=[1],
        help="comma-separated service worker counts; every server is started once per count "
        "(as `recsys serve --workers N`; default 1)",
    )
    parser.add_argument(
        "--tuning",
        nargs="+",
        default=[DEFAULT_TUNING],
        help="RECSYS_SERVE_TUNING values to compare, each a server layout of its own (e.g. "
        "none timeout timeout,freeze,threshold; default: the setting's default)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="start every layout's servers this many times, in turn, and merge their rounds "
        "(default 1)",
    )
    parser.add_argument(
        "--out", help="result files' name (default serve, or serve-smoke with --quick)"
    )
    parser.add_argument("--k", type=int, default=10, help="items per recommendation")
    parser.add_argument("--seed", type=int, default=0, help="seed of the user draws")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"tiny run: concurrency {QUICK_CONCURRENCY}, 3 s per point; writes serve-smoke.*",
    )
    args = parser.parse_args()
    if args.concurrency is None:
        args.concurrency = _csv_ints(QUICK_CONCURRENCY if args.quick else DEFAULT_CONCURRENCY)
    if args.duration is None:
        args.duration = 3.0 if args.quick else 20.0
    if args.warmup is None:
        args.warmup = 1.0 if args.quick else 2.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 4
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.client == "wrk" and WRK is None:
        parser.error("--client wrk: wrk is not installed (apt-get install wrk)")
    if args.duration <= 0 or args.warmup < 0:
        parser.error("--duration must be positive and --warmup not negative")
    return args


# Home ---------------------------------------------------------------------------------------


def data_root() -> Path:
    return Path(os.environ.get("RECSYS_DATASETS") or REPO_ROOT.parent / "shared" / "data")


def prepare_home(home: Path, url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Make sure ``home`` has a servable SASRec champion; return how it was made."""
    wanted = "synthetic" if args.synthetic else "amazon-toys"
    home.mkdir(parents=True, exist_ok=True)
    upgrade(create_engine(url))
    engine = create_engine(url)
    marker_path = home / HOME_MARKER
    try:
        champion = registry.alias_version(engine, registry.CHAMPION)
        if champion is not None:
            marker = json.loads(marker_path.read_text()) if marker_path.exists() else {}
            made_from = marker.get("dataset")
            if made_from is not None and made_from != wanted:
                raise SystemExit(
                    f"{home} was prepared from {made_from} data, not {wanted}: "
                    + ("drop --synthetic" if made_from == "amazon-toys" else "pass --synthetic")
                    + " or choose another --home"
                )
            print(f"reusing {home}: champion v{champion}", flush=True)
            return {"prepared": False, "dataset": made_from or "unknown (reused home)", **marker}

        with engine.connect() as conn:
            events = conn.execute(select(func.count()).select_from(interactions_table)).scalar()
        started = time.perf_counter()
        if events:
            print(f"{home} already holds {events:,} interactions; not importing", flush=True)
            source = "existing interactions"
        else:
            batch, source = _dataset(args)
            loaded = ingest(engine, batch, home / "rejects")
            print(
                f"imported {loaded.rows_inserted:,} interactions from {source} "
                f"in {time.perf_counter() - started:.1f}s",
                flush=True,
            )
        record = _train_champion(engine, url, home, args)
    finally:
        engine.dispose()
    marker = {"dataset": wanted, "source": source, **record}
    marker_path.write_text(json.dumps(marker, indent=2) + "\n")
    return {"prepared": True, **marker}


def _dataset(args: argparse.Namespace) -> tuple[ImportBatch, str]:
    if args.synthetic:
        return generate(SYNTHETIC), f"synthetic {SYNTHETIC}"
    path = args.dataset_path or data_root() / AMAZON_FILE
    if not path.exists():
        raise SystemExit(
            f"dataset not found: {path} (pass --dataset-path, set RECSYS_DATASETS, "
            "or use --synthetic)"
        )
    shown = path.relative_to(data_root()) if path.is_relative_to(data_root()) else path.name
    return import_sequences(path), str(shown)


def _train_champion(
    engine: Engine, url: str, home: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Train SASRec (max_len 50) within the budget, register it and promote it."""
    from recsys.experiment import train_and_evaluate
    from recsys.models.sasrec import SASRecConfig

    config = SASRecConfig(max_len=50)
    overrides: dict[str, Any] = {"budget_seconds": args.train_seconds, "progress": False}
    if args.synthetic:
        overrides |= {"max_epochs": SYNTHETIC_EPOCHS, "threads": 1}
    print(f"training sasrec ({config}; {overrides}) ...", flush=True)
    started = time.perf_counter()
    outcome = train_and_evaluate(
        create_engine(url), "sasrec", "loo", model_config=config, train_overrides=overrides
    )
    trained_s = time.perf_counter() - started
    record = registration.register(engine, outcome, artifacts_dir=home / "artifacts")
    if record.status != registry.SERVABLE:
        raise SystemExit(f"v{record.version} is not servable: {record.error}")
    registry.promote(
        engine, record.version, actor="benchmark", reason="benchmarks/serve.py champion"
    )
    summary = outcome.test.summary()
    ndcg = summary.get("ndcg@10", {}).get("value")
    print(
        f"v{record.version} promoted: {outcome.training.epochs_run} epochs in {trained_s:.0f}s, "
        f"test ndcg@10 {ndcg if ndcg is None else round(ndcg, 4)}",
        flush=True,
    )
    return {
        "champion": record.version,
        "model_config": asdict(config),
        "train_overrides": overrides,
        "epochs": outcome.training.epochs_run,
        "train_seconds": round(trained_s, 1),
        "test_ndcg@10": ndcg,
    }


def user_ids(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(users_table.c.external_id).order_by(users_table.c.id))
            return [str(r) for r in rows.scalars()]
    finally:
        engine.dispose()


# Servers ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Running:
    base: str
    process: subprocess.Popen[bytes]
    log: Path
    startup_s: float


@contextmanager
def bentoml_serve(target: str, env: dict[str, str], log: Path) -> Iterator[Running]:
    """``bentoml serve TARGET`` on a free port in its own session, until /readyz is 200.

    Stopped on the way out whatever happens (see :func:`_stop`).
    """
    port = free_port()
    bentoml = Path(sys.executable).with_name("bentoml")
    command = [str(bentoml), "serve", target, "--port", str(port), "--host", "127.0.0.1"]
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us only; we stop it in order
        )
        workers: list[psutil.Process] = []
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_ready(process, base, log)
            workers = _descendants(process.pid)
            yield Running(base, process, log, time.perf_counter() - started)
        finally:
            _stop(process, workers)


def _wait_ready(process: subprocess.Popen[bytes], base: str, log: Path) -> None:
    deadline = time.monotonic() + READY_WITHIN_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"bentoml serve exited ({process.returncode}):\n{_tail(log)}")
        if STARTUP_FAILED in _tail(log, 100_000):  # bentoml keeps retrying the worker
            raise RuntimeError(f"the service failed to start:\n{_tail(log)}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready within {READY_WITHIN_S:.0f}s:\n{_tail(log)}")
        time.sleep(0.3)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        children: list[psutil.Process] = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    return children


def _stop(process: subprocess.Popen[bytes], known: list[psutil.Process]) -> None:
    """SIGTERM to ``bentoml serve`` and a wait; then SIGKILL for whatever of it is left.

    Its workers run in process groups of their own and outlive a killed arbiter, so they are
    remembered (``known``, taken once the server was ready, and its children now) as psutil
    processes, which refuse to signal a pid that was reused.
    """
    workers = list({w.pid: w for w in [*known, *_descendants(process.pid)]}.values())
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            print(f"bentoml serve (pid {process.pid}) did not stop; killing it", flush=True)
            process.kill()
            process.wait()
    _, alive = psutil.wait_procs(workers, timeout=10)
    for worker in alive:
        print(f"killing a leftover server process (pid {worker.pid})", flush=True)
        with suppress(psutil.Error):
            worker.kill()
    psutil.wait_procs(alive, timeout=5)


def _tail(log: Path, chars: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def tree_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process and its descendants; None if it is gone."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


# Load ---------------------------------------------------------------------------------------


def request_body(user_id: str, k: int, explain: bool) -> bytes:
    return json.dumps({"user_id": user_id, "k": k, "explain": explain}).encode()


# wrk's Lua side (POST with a JSON body and the key; the latency distribution as JSON).
WRK_SCRIPT = Path(__file__).with_name("serve.lua")


def wrk_loop(
    base: str,
    variant: Variant,
    users_file: Path,
    script: Path,
    concurrency: int,
    *,
    warmup: float,
    duration: float,
    k: int,
    seed: int,
    server_pid: int,
    round_index: int = 0,
) -> Round:
    """The same closed loop driven by wrk (C, one thread): C connections, back to back."""

    def run(seconds: float) -> tuple[dict[str, Any], float]:
        command = [
            str(WRK), "-t1", f"-c{concurrency}", f"-d{max(seconds, 1.0):g}s", "--timeout",
            f"{REQUEST_TIMEOUT_S:g}s", "-s", str(script), base, "--", str(users_file), str(k),
            "true" if variant.explain else "false", variant.path, str(seed * 101 + round_index),
            API_KEY_HEADER["Authorization"],
        ]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert process.stdout is not None
        output = process.stdout.read().decode()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        line = next((x for x in output.splitlines() if x.startswith("WRK_RESULT ")), None)
        if process.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({process.returncode}): {output[-2000:]}")
        return json.loads(line.removeprefix("WRK_RESULT ")), usage.ru_utime + usage.ru_stime

    if warmup > 0:
        run(warmup)
    server0, gc0 = tree_cpu_seconds(server_pid), gc_pauses(base)
    result, client_cpu = run(duration)
    server1, gc1 = tree_cpu_seconds(server_pid), gc_pauses(base)
    wall = result["duration_us"] / 1e6
    # Latencies rebuilt from wrk's 999 quantiles, one value per response, so that rounds
    # merge like the Python client's raw samples.
    quantiles = np.asarray(result["quantiles_us"], dtype=np.float64) / 1000.0  # ms
    responses = int(result["requests"])
    latencies = quantiles[(np.arange(responses) * len(quantiles)) // max(responses, 1)]
    errors = int(result["status_errors"]) + int(result["socket_errors"])
    ok = max(0, int(result["requests"]) - int(result["status_errors"]))
    samples = []
    if errors:
        samples.append(
            f"{result['status_errors']} non-2xx responses, {result['socket_errors']} socket errors"
        )
    return Round(
        variant=variant.name,
        concurrency=concurrency,
        seconds=wall,
        wall_s=wall,
        # wrk's quantiles cover every response; with errors the percentiles include them.
        latencies_ms=latencies[:ok].tolist(),
        errors=errors,
        client_cpu_s=client_cpu,
        server_cpu_s=None if server0 is None or server1 is None else server1 - server0,
        error_samples=samples,
        gc=_gc_delta(gc0, gc1),
    )


async def closed_loop(
    base: str,
    variant: Variant,
    users: Sequence[str],
    concurrency: int,
    *,
    warmup: float,
    duration: float,
    k: int,
    seed: int,
    server_pid: int,
    round_index: int = 0,
) -> Round:
    """C workers send back-to-back requests; completions inside the window are counted."""
    headers = {"content-type": "application/json", **API_KEY_HEADER}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    done: list[tuple[float, float, bool]] = []  # (finished at, latency s, ok)
    samples: list[str] = []
    async with httpx.AsyncClient(
        base_url=base, limits=limits, timeout=REQUEST_TIMEOUT_S, headers=headers
    ) as client:
        start = time.perf_counter()
        window_start, window_end = start + warmup, start + warmup + duration
        cpu: dict[str, float | None] = {}
        collected: dict[str, tuple[float, float] | None] = {}

        async def worker(n: int) -> None:
            rng = random.Random((seed * 10_007 + n) * 101 + round_index)
            while (sent := time.perf_counter()) < window_end:
                body = request_body(rng.choice(users), k, variant.explain)
                ok = False
                try:
                    response = await client.post(variant.path, content=body)
                    ok = response.status_code == 200
                    if not ok and len(samples) < 5:
                        samples.append(f"HTTP {response.status_code}: {response.text[:200]}")
                except httpx.HTTPError as exc:
                    if len(samples) < 5:
                        samples.append(f"{type(exc).__name__}: {exc}")
                finished = time.perf_counter()
                done.append((finished, finished - sent, ok))

        async def clock() -> None:
            await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
            cpu["t0"], cpu["client0"] = time.perf_counter(), time.process_time()
            cpu["server0"] = tree_cpu_seconds(server_pid)
            collected["before"] = await asyncio.to_thread(gc_pauses, base)
            await asyncio.sleep(max(0.0, window_end - time.perf_counter()))
            cpu["t1"], cpu["client1"] = time.perf_counter(), time.process_time()
            cpu["server1"] = tree_cpu_seconds(server_pid)
            collected["after"] = await asyncio.to_thread(gc_pauses, base)

        await asyncio.gather(clock(), *(worker(n) for n in range(concurrency)))

    inside = [(lat, ok) for finished, lat, ok in done if window_start <= finished <= window_end]
    server0, server1 = cpu["server0"], cpu["server1"]
    return Round(
        variant=variant.name,
        concurrency=concurrency,
        seconds=duration,
        wall_s=max(float(cpu["t1"] or 0) - float(cpu["t0"] or 0), 1e-9),
        latencies_ms=[1000 * lat for lat, ok in inside if ok],
        errors=sum(1 for _, ok in inside if not ok),
        client_cpu_s=float(cpu["client1"] or 0) - float(cpu["client0"] or 0),
        server_cpu_s=None if server0 is None or server1 is None else server1 - server0,
        error_samples=samples,
        gc=_gc_delta(collected.get("before"), collected.get("after")),
    )


@dataclass
class Round:
    """One measured window of a (variant, concurrency) point."""

    variant: str
    concurrency: int
    seconds: float
    wall_s: float
    latencies_ms: list[float]
    errors: int
    client_cpu_s: float
    server_cpu_s: float | None
    error_samples: list[str]
    gc: tuple[float, float] | None = None  # the servers' full collections: count, seconds


def gc_pauses(base: str) -> tuple[float, float] | None:
    """The server's full garbage collections so far, all workers: (count, pause seconds),
    from /metrics (``recsys_gc_full_pause_seconds``); None where it has none."""
    try:
        text = httpx.get(f"{base}/metrics", timeout=REQUEST_TIMEOUT_S).text
    except httpx.HTTPError:
        return None
    values: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split(" ")[0]
        if name in ("recsys_gc_full_pause_seconds_count", "recsys_gc_full_pause_seconds_sum"):
            values[name.rsplit("_", 1)[1]] = float(line.split()[-1])
    if set(values) != {"count", "sum"}:
        return None
    return values["count"], values["sum"]


def _gc_delta(
    before: tuple[float, float] | None, after: tuple[float, float] | None
) -> tuple[float, float] | None:
    if before is None or after is None:
        return None
    return after[0] - before[0], after[1] - before[1]


def merge_rounds(rounds: Sequence[Round]) -> Point:
    """A point from its rounds: counts and CPU summed, latency percentiles over all of them."""
    latencies = np.asarray([x for r in rounds for x in r.latencies_ms], dtype=np.float64)
    seconds = sum(r.seconds for r in rounds)
    wall = sum(r.wall_s for r in rounds)
    server = [r.server_cpu_s for r in rounds if r.server_cpu_s is not None]
    p50 = p95 = p99 = None
    if len(latencies):
        p50, p95, p99 = (float(x) for x in np.percentile(latencies, [50, 95, 99]))
    return Point(
        variant=rounds[0].variant,
        concurrency=rounds[0].concurrency,
        seconds=seconds,
        requests=len(latencies) + sum(r.errors for r in rounds),
        errors=sum(r.errors for r in rounds),
        req_per_s=len(latencies) / seconds,
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        mean_ms=float(latencies.mean()) if len(latencies) else None,
        max_ms=float(latencies.max()) if len(latencies) else None,
        client_cpu_pct=100 * sum(r.client_cpu_s for r in rounds) / wall,
        server_cpu_pct=(None if len(server) < len(rounds) else 100 * sum(server) / wall),
        error_samples=[e for r in rounds for e in r.error_samples][:5],
        rounds=len(rounds),
        full_gcs=None
        if any(r.gc is None for r in rounds)
        else sum(r.gc[0] for r in rounds if r.gc),
        gc_pause_ms=(
            None
            if any(r.gc is None for r in rounds)
            else 1000 * sum(r.gc[1] for r in rounds if r.gc)
        ),
    )


def probe(base: str, variant: Variant, users: Sequence[str], k: int) -> dict[str, list[str]]:
    """One request per probe user; checks the answers' shape; returns each user's item ids."""
    answers: dict[str, list[str]] = {}
    with httpx.Client(base_url=base, timeout=REQUEST_TIMEOUT_S, headers=API_KEY_HEADER) as client:
        for user in users:
            response = client.post(
                variant.path,
                content=request_body(user, k, variant.explain),
                headers={"content-type": "application/json"},
            )
            if response.status_code != 200:
                raise RuntimeError(
                    f"{variant.name}: {variant.path} answered {response.status_code}: "
                    f"{response.text[:500]}"
                )
            if variant.name.startswith("noop"):
                continue
            items = response.json()["items"]
            if len(items) != k:
                raise RuntimeError(f"{variant.name}: {len(items)} items for {user}, wanted {k}")
            if variant.explain and not all(isinstance(i.get("because"), list) for i in items):
                raise RuntimeError(f"{variant.name}: items without explanations for {user}")
            answers[user] = [str(i["item_id"]) for i in items]
    return answers


def served_model(base: str) -> dict[str, Any]:
    response = httpx.get(f"{base}/model", headers=API_KEY_HEADER, timeout=REQUEST_TIMEOUT_S)
    response.raise_for_status()
    info: dict[str, Any] = response.json()
    return info


# Report -------------------------------------------------------------------------------------


def evaluate_targets(points: Sequence[Point], noop_share: float = 0.5) -> list[dict[str, Any]]:
    """The targets at concurrency 8 for each process layout (workers, tuning) measured;
    ``verdict`` is PASS, FAIL or n/a (not measured). ``noop_share``: the share of the no-op
    floor ``recommend`` must reach."""
    layouts = list(dict.fromkeys((p.workers, p.tuning) for p in points)) or [(1, DEFAULT_TUNING)]
    targets: list[dict[str, Any]] = []
    for workers, tuning in layouts:
        mine = [p for p in points if (p.workers, p.tuning) == (workers, tuning)]
        for target in _layout_targets(mine, noop_share):
            targets.append({"workers": workers, "tuning": tuning, **target})
    return targets


def _layout_targets(points: Sequence[Point], noop_share: float) -> list[dict[str, Any]]:
    def at(variant: str) -> Point | None:
        return next(
            (p for p in points if p.variant == variant and p.concurrency == TARGET_CONCURRENCY),
            None,
        )

    rec, explain, naive = at("recommend"), at("explain"), at("naive")
    # The floor is the faster of the two no-op endpoints (the stricter comparison).
    floors = [p for p in (at("noop"), at("noop-async")) if p is not None]
    noop = max(floors, key=lambda p: p.req_per_s) if floors else None
    targets: list[dict[str, Any]] = []

    def add(name: str, required: str, measured: str | None, ok: bool | None) -> None:
        targets.append(
            {
                "target": name,
                "required": required,
                "measured": measured or "not measured",
                "verdict": "n/a" if ok is None else verdict(ok),
            }
        )

    floor = f">= {noop_share:.0%} of noop"
    if rec and noop and noop.req_per_s > 0:
        share = rec.req_per_s / noop.req_per_s
        add(
            "recommend throughput vs noop",
            floor,
            f"{rec.req_per_s:,.1f} vs {noop.req_per_s:,.1f} req/s ({noop.variant}) = {share:.0%}",
            share >= noop_share,
        )
    else:
        add("recommend throughput vs noop", floor, None, None)
    if rec and rec.p99_ms is not None:
        add("recommend p99 latency", "<= 50 ms", f"{rec.p99_ms:.1f} ms", rec.p99_ms <= 50)
    else:
        add("recommend p99 latency", "<= 50 ms", None, None)
    if rec and naive and naive.req_per_s > 0:
        ratio = rec.req_per_s / naive.req_per_s
        add(
            "recommend throughput vs naive torch eager",
            ">= 2.0x naive",
            f"{rec.req_per_s:,.1f} vs {naive.req_per_s:,.1f} req/s = {ratio:.2f}x",
            ratio >= 2.0,
        )
    else:
        add("recommend throughput vs naive torch eager", ">= 2.0x naive", None, None)
    if rec and explain and rec.p50_ms and explain.p50_ms is not None:
        ratio = explain.p50_ms / rec.p50_ms
        add(
            "explain p50 latency vs recommend",
            "<= 1.2x recommend p50",
            f"{explain.p50_ms:.2f} vs {rec.p50_ms:.2f} ms = {ratio:.2f}x",
            ratio <= 1.2,
        )
    else:
        add("explain p50 latency vs recommend", "<= 1.2x recommend p50", None, None)
    return targets


def agreement(answers: dict[str, dict[str, list[str]]]) -> dict[str, Any] | None:
    """Do recommend (ONNX) and naive (torch) return the same top-k sets for the probe users?"""
    onnx, torch_eager = answers.get("recommend"), answers.get("naive")
    if not onnx or not torch_eager:
        return None
    users = sorted(set(onnx) & set(torch_eager))
    same = sum(1 for u in users if set(onnx[u]) == set(torch_eager[u]))
    return {"users": len(users), "same_top_k": same}


def plot(points: Sequence[Point], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (latency, throughput) = plt.subplots(1, 2, figsize=(12, 4.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {"p50_ms": ("-", "p50"), "p95_ms": ("--", "p95"), "p99_ms": (":", "p99")}
    layouts = len({(p.workers, p.tuning) for p in points}) > 1
    for n, key in enumerate(dict.fromkeys((p.variant, p.workers, p.tuning) for p in points)):
        mine = sorted(
            (p for p in points if (p.variant, p.workers, p.tuning) == key),
            key=lambda p: p.concurrency,
        )
        name = f"{key[0]} w{key[1]} {key[2]}" if layouts else key[0]
        xs = [p.concurrency for p in mine]
        colour = colours[n % len(colours)]
        for attr, (style, label) in styles.items():
            ys = [getattr(p, attr) if getattr(p, attr) is not None else np.nan for p in mine]
            latency.plot(xs, ys, style, marker="o", ms=3, color=colour, label=f"{name} {label}")
        throughput.plot(xs, [p.req_per_s for p in mine], "-", marker="o", color=colour, label=name)
    latency.set(xlabel="concurrency (requests in flight)", ylabel="latency, ms", yscale="log")
    latency.set_title("Latency (p50 solid, p95 dashed, p99 dotted)")
    latency.axhline(50, color="grey", lw=0.8, ls="-.", label="50 ms (p99 target)")
    throughput.set(xlabel="concurrency (requests in flight)", ylabel="requests / s")
    throughput.set_title("Throughput")
    throughput.set_ylim(bottom=0)
    for ax in (latency, throughput):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({p.concurrency for p in points}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.grid(True, which="both", alpha=0.3)
    latency.legend(fontsize=7, ncol=2)
    throughput.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _row(cells: Sequence[str]) -> str:
    return "  ".join(
        c.ljust(w) if i == 0 else c.rjust(w)
        for i, (c, w) in enumerate(zip(cells, WIDTHS, strict=True))
    )


# Main ---------------------------------------------------------------------------------------


def _on_terminate(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM/SIGHUP unwind like Ctrl-C, through the servers' ``finally`` blocks."""
    if callable(signal.getsignal(signal.SIGINT)):  # Python's, or asyncio.run's during a load
        signal.raise_signal(signal.SIGINT)  # so asyncio.run cancels the load cleanly
    else:
        raise SystemExit(128 + signum)


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    signal.signal(signal.SIGTERM, _on_terminate)
    signal.signal(signal.SIGHUP, _on_terminate)
    info = machine_info(SOURCES)
    info["packages"] = ", ".join(f"{p} {_version(p)}" for p in PACKAGES)
    info["scorer_threads"] = os.environ.get("RECSYS_SCORER_THREADS") or "1 (default)"
    info["client"] = (
        f"wrk ({_wrk_version()})" if args.client == "wrk" else "python (httpx, asyncio)"
    )
    load = os.getloadavg()
    info["load_average"] = " ".join(f"{x:.2f}" for x in load)
    if load[0] > 0.5 * (os.cpu_count() or 1):
        print(
            f"warning: the machine is busy (load average {info['load_average']}); "
            "the numbers will be noisy",
            flush=True,
        )

    with tempfile.TemporaryDirectory(prefix="recsys_bench_serve_") as scratch:
        home = (args.home or Path(scratch) / "home").expanduser().resolve()
        url = args.database_url or f"sqlite:///{home / 'recsys.db'}"
        prepared = prepare_home(home, url, args)
        key_name = f"bench-serve-{os.getpid()}-{int(time.time())}"
        secret, _ = create_key(create_engine(url), key_name, [READ])
        API_KEY_HEADER["Authorization"] = f"Bearer {secret}"  # every request carries a key
        users = user_ids(url)
        if not users:
            raise SystemExit(f"{home} has no users")
        probe_users = random.Random(args.seed).sample(users, min(PROBE_USERS, len(users)))
        users_file = Path(scratch) / "users.txt"
        users_file.write_text("".join(f"{u}\n" for u in users))
        wrk_script = WRK_SCRIPT
        env = {key: value for key, value in os.environ.items() if key != "RECSYS_MODEL_SOURCE"} | {
            "RECSYS_HOME": str(home),
            "RECSYS_DATABASE_URL": url,
            "PYTHONPATH": os.pathsep.join(
                [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
        }
        champion = _champion(url)
        print(
            f"home {home}: champion v{champion}, {len(users):,} users; "
            f"variants {','.join(args.variants)}; concurrency "
            f"{','.join(map(str, args.concurrency))}; {args.warmup:g}s warm-up + "
            f"{args.duration:g}s per point in {args.rounds} rounds",
            flush=True,
        )

        points: list[Point] = []
        answers: dict[str, dict[str, list[str]]] = {}
        servers: dict[str, dict[str, Any]] = {}
        model: dict[str, Any] = {}
        print()
        print(_row(HEADERS))
        print(_row(["-" * w for w in WIDTHS]), flush=True)
        layouts = [(w, t) for w in args.workers for t in args.tuning]
        # Every layout's servers in turn, --repeat times (A B C A B C ...), so that a drift of
        # the machine's speed over minutes cannot favour one layout; rounds merge at the end.
        measured_rounds: dict[tuple[str, int, str, int], list[Round]] = {}
        schedule = [(x, y) for _ in range(args.repeat) for x in layouts for y in SERVERS]
        for (workers, tuning), server in schedule:
            variants = [VARIANTS[v] for v in server.variants if v in args.variants]
            if not variants:
                continue
            label = f"{server.name}-w{workers}-{tuning.replace(',', '+')}"
            log = home / "logs" / f"serve-{label}.log"
            server_env = serve_env(workers, env)
            if tuning != DEFAULT_TUNING:
                server_env["RECSYS_SERVE_TUNING"] = tuning
            with bentoml_serve(server.target, server_env, log) as running:
                servers[label] = {
                    "target": server.target,
                    "workers": workers,
                    "tuning": tuning,
                    "startup_s": round(running.startup_s, 1),
                    "log": os.path.relpath(log, REPO_ROOT),
                }
                if server.name == "recsys":
                    model = served_model(running.base)
                    if model.get("model_version") != champion:
                        raise RuntimeError(f"the service serves {model}, not v{champion}")
                for variant in variants:
                    answers[variant.name] = probe(running.base, variant, probe_users, args.k)
                # The server's variants take turns, round by round, so a drift in the
                # machine's speed cannot favour one of them.
                for concurrency in args.concurrency:
                    rounds: dict[str, list[Round]] = {v.name: [] for v in variants}
                    for index in range(args.rounds):
                        for variant in variants:
                            measure = dict(
                                warmup=args.warmup if index == 0 else ROUND_WARMUP_S,
                                duration=args.duration / args.rounds,
                                k=args.k,
                                seed=args.seed,
                                server_pid=running.process.pid,
                                round_index=index,
                            )
                            if args.client == "wrk":
                                measured = wrk_loop(
                                    running.base,
                                    variant,
                                    users_file,
                                    wrk_script,
                                    concurrency,
                                    **measure,  # type: ignore[arg-type]
                                )
                            else:
                                measured = asyncio.run(
                                    closed_loop(
                                        running.base,
                                        variant,
                                        users,
                                        concurrency,
                                        **measure,  # type: ignore[arg-type]
                                    )
                                )
                            rounds[variant.name].append(measured)
                    for variant in variants:
                        point = merge_rounds(rounds[variant.name])
                        point.workers, point.tuning = workers, tuning
                        key = (variant.name, workers, tuning, concurrency)
                        measured_rounds.setdefault(key, []).extend(rounds[variant.name])
                        print(_row(point.cells()), flush=True)
                        for sample in point.error_samples[:2]:
                            print(f"    error: {sample}", flush=True)
        for (_, workers, tuning, _), merged in measured_rounds.items():
            point = merge_rounds(merged)
            point.workers, point.tuning = workers, tuning
            points.append(point)

        revoke_key(create_engine(url), key_name)

    _report(args, info, prepared, model, servers, points, answers, len(users))


def _wrk_version() -> str:
    assert WRK is not None
    done = subprocess.run([WRK, "-v"], capture_output=True, text=True)
    return (done.stdout + done.stderr).split()[1] if (done.stdout + done.stderr).split() else "?"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def _champion(url: str) -> int | None:
    engine = create_engine(url)
    try:
        return registry.alias_version(engine, registry.CHAMPION)
    finally:
        engine.dispose()


def _report(
    args: argparse.Namespace,
    info: dict[str, Any],
    prepared: dict[str, Any],
    model: dict[str, Any],
    servers: dict[str, dict[str, Any]],
    points: list[Point],
    answers: dict[str, dict[str, list[str]]],
    num_users: int,
) -> None:
    name = args.out or ("serve-smoke" if args.quick else "serve")
    dataset = prepared.get("dataset", "unknown")
    table = [p.cells() for p in points]
    targets = evaluate_targets(points, WRK_NOOP_SHARE if args.client == "wrk" else NOOP_SHARE)
    target_headers = (
        "workers",
        "tuning",
        "target (concurrency 8)",
        "required",
        "measured",
        "verdict",
    )
    target_rows = [
        [str(t["workers"]), t["tuning"], t["target"], t["required"], t["measured"], t["verdict"]]
        for t in targets
    ]
    same = agreement(answers)

    print()
    print(format_table(HEADERS, table))
    print()
    print(format_table(target_headers, target_rows))
    if same is not None:
        print(
            f"\nrecommend (ONNX) and naive (torch) agree on the top-{args.k} set for "
            f"{same['same_top_k']}/{same['users']} probe users"
        )

    served = "not loaded (recommend was not measured)"
    if model.get("num_items"):
        served = f"v{model['model_version']} {model['model_family']}, {model['num_items']:,} items"
    trained = ""
    if "epochs" in prepared:
        trained = f", trained {prepared['epochs']} epochs in {prepared['train_seconds']}s"
    notes = [
        f"Model: {served}; home prepared from {dataset} data ({num_users:,} users{trained}).",
        "Variants: "
        + "; ".join(f"{v.name} = {v.description}" for v in VARIANTS.values())
        + ". recommend and explain share one server process.",
        (
            "Closed loop on loopback: wrk (one thread, C keep-alive connections; a Lua script "
            "draws the user of each request) sends the next request on a connection as soon "
            "as the last returns. "
            if args.client == "wrk"
            else "Closed loop on loopback: C async httpx workers (one client process, one "
            "event loop) send the next request as soon as the last returns. "
        )
        + f"Each point is {args.duration:g}s "
        f"measured in {args.rounds} rounds; the variants served by one process take turns "
        f"round by round ({args.warmup:g}s warm-up before the first round, "
        f"{ROUND_WARMUP_S:g}s before the others). Requests finishing inside a window count; "
        "req/s counts successful ones; latencies are measured by the client.",
        "Each server is `bentoml serve TARGET` with the service arguments of "
        "serving.service:RecsysService (benchmarks/serve_variants.py copies its name and "
        "config).",
        f'Every request has the body {{"user_id": <user>, "k": {args.k}, "explain": ...}} '
        f"(the noops ignore it); users are drawn with seed {args.seed} from the home's users.",
        "CPU % is CPU seconds per wall second over the window (100 = one core): client is "
        "this process, server is the bentoml process tree. On a 2-core machine client and "
        "server share the cores, so a client near 100% caps the noop floor.",
        "naive rebuilds the champion's torch model (recsys.export.load_model) and scores it "
        "in eager mode under torch.no_grad, with the scorer's thread count "
        "(RECSYS_SCORER_THREADS, default 1), one request at a time in a sync endpoint "
        "(BentoML's worker threads), as a first service would; it returns ids and scores, "
        "no titles.",
        "workers: the service's BentoML worker processes (`recsys serve --workers N`; the "
        "no-op server gets the same count, as it copies the service's config). tuning: "
        "RECSYS_SERVE_TUNING of both servers (default: timeout,freeze,threshold; none: "
        "BentoML's timeout middleware and Python's collector as they come; see "
        "serving/runtime.py). full GCs and GC pause ms: the full (generation 2) collections "
        "of the server's workers during the measured windows and their pauses summed, from "
        "recsys_gc_full_pause_seconds on /metrics. server CPU ms/req: the server's CPU per "
        "successful request, a cost that holds when other work shares the machine.",
        "recommend is a coroutine that hands its query to a micro-batcher "
        "(serving/batcher.py): requests that arrive while a batch runs share the next "
        "history query and ONNX run (no batching window; a lone request goes at once).",
    ]
    if same is not None:
        notes.append(
            f"recommend (ONNX) and naive (torch) returned the same top-{args.k} set for "
            f"{same['same_top_k']}/{same['users']} probe users."
        )
    if args.quick:
        notes.append("--quick: a smoke run, not a measurement to quote.")

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    plot_path = RESULTS_DIR / f"{name}-latency.png"
    if points:
        plot(points, plot_path, f"recsys serving, {dataset}, {info['date']}")
    json_path, md_path = write_results(
        name,
        "Serving benchmark: /recommend under a closed-loop load",
        info,
        {
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "home": prepared,
            "model": model,
            "servers": servers,
            "points": [asdict(p) for p in points],
            "targets": targets,
            "onnx_vs_torch_agreement": same,
        },
        [
            ("Throughput and latency per variant and concurrency", HEADERS, table),
            (f"Targets at concurrency {TARGET_CONCURRENCY}", target_headers, target_rows),
        ],
        notes,
    )
    if points:
        with md_path.open("a") as md:
            md.write(f"\n![latency and throughput]({plot_path.name})\n")
    written = [json_path, md_path, *([plot_path] if points else [])]
    print("\nwrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("\ninterrupted; the servers were stopped", file=sys.stderr)
        sys.exit(130)
