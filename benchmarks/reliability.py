"""Reliability under faults: fuzzing, champion swaps, killed connections, bad files, races.

Every check runs against real processes (``bentoml serve``, ``recsys`` commands, PostgreSQL)
and gets a target and a verdict:

1. Fuzzing: ``st run <base>/docs.json --checks all`` (schemathesis, an admin key,
   tests/serving/schemathesis.toml, ``--max-examples`` per operation) against the service on
   a SQLite home with a tiny SASRec champion. Counted from its NDJSON report: requests sent,
   responses by status, failed checks by name. Targets: no 5xx response, no failed check.
2. Champion swap and rollback under load: C client threads send ``POST /recommend`` (read
   key) back to back while the script trains and registers a new version, promotes it
   (``recsys.registry.promote``), waits until it is served, then rolls back
   (``registry.rollback``). The service polls the alias every second
   (``RECSYS_POLL_SECONDS=1``). Target: no failed request (a non-200 or a transport error);
   also reported: seconds from each alias move to the first response from the new version.
3. Killed database connections: the service on PostgreSQL (its own database
   ``recsys_t_reliability_<pid>``, migrated with ``recsys db upgrade``, dropped afterwards)
   under the same load; three times, every backend of that database is terminated
   (``pg_terminate_backend``). Per kill: requests that failed and seconds until requests
   succeed again (the first success after which none fails). Target: recovery within 5 s.
4. Corrupted import files: K event CSV files and K sequence files, each corrupted at random
   (seeded) with a few of: unterminated quotes, stray quotes, stray separators, NUL bytes,
   invalid UTF-8, wrong field counts, truncation mid-record, duplicate rows, U+2028 / \\x0b /
   \\x1c and other separators inside fields, CRLF line ends. Each is imported with
   ``import_events`` / ``import_sequences`` + ``ingest`` into a fresh SQLite database (a subset
   also into fresh PostgreSQL databases), then imported again into the same one. Two counts:
   records unaccounted for by the importer, ``|rows_read - (inserted + already stored +
   rejected)|`` summed over files, and the importer's ``rows_read`` against the records the
   script knows the file holds (a record is a non-empty line: only ``\\n`` and ``\\r\\n`` end
   one, and the script never writes a field that may span lines; for a sequence file a kept
   line counts as its events, a rejected one as one). A file the importer refuses as a whole
   counts all its records as unaccounted. Target: 0 and 0.
5. Concurrent retrains: two ``recsys retrain --models ease`` processes started at once on one
   home (synthetic data), a fresh PREFECT_HOME and no PREFECT_API_URL (each would start a
   temporary Prefect server). Target: one completes, the other says the retrain is already
   running.

A measurement, not a test: the script exits 0 whatever the verdicts and prints which targets
failed. Every server gets a free port, its own RECSYS_HOME and BENTOML_HOME, and is stopped on
the way out; every database the script made is dropped.

    .venv/bin/python benchmarks/reliability.py                  # about 4 minutes on 2 cores
    .venv/bin/python benchmarks/reliability.py --quick          # a smoke run, under 3 minutes
    .venv/bin/python benchmarks/reliability.py --skip-postgres  # checks 3 and 4's PG part off

A full run writes results/reliability.json and results/reliability.md; ``--quick`` or
``--checks`` (a subset) writes results/reliability-smoke.*.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import random
import re
import secrets
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import psycopg
from _common import REPO_ROOT, admin_url, format_table, machine_info, verdict, write_results
from psycopg import sql
from serve import bentoml_serve
from sqlalchemy import Engine, select
from sqlalchemy.engine import make_url

from recsys import registry
from recsys.data.ingest import ingest
from recsys.data.synthetic import SyntheticConfig, generate
from recsys.db.engine import create_engine
from recsys.db.migrate import upgrade
from recsys.db.schema import users_table
from recsys.keys import create_key
from recsys.registry import registration

SOURCES = (
    "serving",
    "recsys/data/readers.py",
    "recsys/data/importers.py",
    "recsys/data/ingest.py",
    "recsys/data/load.py",
    "recsys/db/engine.py",
    "recsys/registry",
    "flows/retrain.py",
    "flows/common.py",
    "benchmarks/reliability.py",
)
SERVICE = "serving.service:RecsysService"
SCHEMATHESIS_CONFIG = REPO_ROOT / "tests" / "serving" / "schemathesis.toml"
BIN = Path(sys.executable).parent
DB_PREFIX = f"recsys_t_reliability_{os.getpid()}"
POLL_SECONDS = 1.0
REQUEST_TIMEOUT_S = 10.0
SWAP_WITHIN_S = 60.0  # give up waiting for a version to be served after this long
RECOVERY_TARGET_S = 5.0
RETRAIN_TIMEOUT_S = 600.0
# The serving tests' home: small synthetic data and a tiny SASRec (seconds to train).
HOME_DATA = SyntheticConfig(num_users=200, num_items=90, num_interactions=6000, seed=3)
RETRAIN_MODELS = "ease"  # closed form: a second of training
RETRAIN_DATA = ("--users", "300", "--items", "120", "--interactions", "6000", "--seed", "5")
ERROR_LINE = re.compile(r"error|exception|traceback|warning", re.IGNORECASE)

CHECKS = ("fuzz", "swap", "kill", "import", "retrain")


@dataclass(frozen=True)
class Sizes:
    fuzz_examples: int
    clients: int
    hold_s: float  # load before and after each alias move / kill
    kills: int
    kill_every_s: float
    files: int
    postgres_files: int
    max_records: int


FULL = Sizes(
    fuzz_examples=100,
    clients=8,
    hold_s=3.0,
    kills=3,
    kill_every_s=8.0,
    files=200,
    postgres_files=20,
    max_records=300,
)
QUICK = Sizes(
    fuzz_examples=10,
    clients=8,
    hold_s=1.5,
    kills=3,
    kill_every_s=3.0,
    files=30,
    postgres_files=4,
    max_records=120,
)


@dataclass
class Result:
    """One row of the summary table; ``details`` go to the JSON file."""

    check: str
    name: str
    measured: str
    target: str
    ok: bool | None  # None: not measured (skipped or the harness failed)
    details: dict[str, Any] = field(default_factory=dict)

    def cells(self, number: int) -> list[str]:
        shown = "n/a" if self.ok is None else verdict(self.ok)
        return [f"{number}. {self.name}", self.measured, self.target, shown]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller numbers (a smoke run)")
    parser.add_argument(
        "--skip-postgres", action="store_true", help="no PostgreSQL (check 3 and part of 4 off)"
    )
    parser.add_argument(
        "--checks",
        default=",".join(CHECKS),
        help=f"comma-separated subset of {','.join(CHECKS)} (default: all)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the files and the fuzzer")
    parser.add_argument("--fuzz-examples", type=int, help="schemathesis --max-examples")
    parser.add_argument("--clients", type=int, help="client threads of checks 2 and 3")
    parser.add_argument("--files", type=int, help="files of each kind in check 4")
    parser.add_argument(
        "--keep-files", type=Path, help="copy check 4's corrupted files (and a manifest) here"
    )
    args = parser.parse_args()
    chosen = [c.strip() for c in args.checks.split(",") if c.strip()]
    unknown = sorted(set(chosen) - set(CHECKS))
    if unknown or not chosen:
        parser.error(f"unknown check(s) {unknown}; choose from {','.join(CHECKS)}")
    args.checks = [c for c in CHECKS if c in chosen]
    base = QUICK if args.quick else FULL
    args.sizes = Sizes(
        **{
            **asdict(base),
            **{
                k: v
                for k, v in (
                    ("fuzz_examples", args.fuzz_examples),
                    ("clients", args.clients),
                    ("files", args.files),
                )
                if v is not None
            },
        }
    )
    return args


# Homes, servers and databases ---------------------------------------------------------------


@dataclass
class Home:
    path: Path
    url: str
    champion: int
    keys: dict[str, str]
    users: list[str]


def train_version(engine: Engine, url: str, home: Path, seed: int) -> int:
    """A tiny SASRec (as tests/serving/conftest.py trains), registered, not promoted."""
    from recsys.experiment import train_and_evaluate
    from recsys.models.sasrec import SASRecConfig

    outcome = train_and_evaluate(
        engine,
        "sasrec",
        "loo",
        model_config=SASRecConfig(embedding_dim=32, max_len=20),
        train_overrides={"max_epochs": 3, "threads": 1, "progress": False, "seed": seed},
    )
    record = registration.register(engine, outcome, artifacts_dir=home / "artifacts")
    if record.status != registry.SERVABLE:
        raise RuntimeError(f"v{record.version} is not servable: {record.error}")
    return record.version


def _upgrade(url: str) -> None:
    upgrade(create_engine(url))


def build_home(path: Path, url: str, *, migrate: Callable[[str], None] = _upgrade) -> Home:
    """Migrate, ingest synthetic data, train and promote a champion, make read/admin keys."""
    path.mkdir(parents=True, exist_ok=True)
    migrate(url)
    engine = create_engine(url)
    try:
        ingest(engine, generate(HOME_DATA), path / "rejects")
        champion = train_version(engine, url, path, seed=0)
        registry.promote(engine, champion, actor="benchmark", reason="reliability champion")
        keys = {
            scope: create_key(engine, f"reliability-{scope}", [scope])[0]
            for scope in ("read", "admin")
        }
        with engine.connect() as conn:
            users = [str(u) for u in conn.execute(select(users_table.c.external_id)).scalars()]
    finally:
        engine.dispose()
    return Home(path, url, champion, keys, users)


def service_env(home: Home, scratch: Path, name: str) -> dict[str, str]:
    drop = ("RECSYS_MODEL_SOURCE", "PROMETHEUS_MULTIPROC_DIR", "RECSYS_READ_AUTH")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return env | {
        "RECSYS_HOME": str(home.path),
        "RECSYS_DATABASE_URL": home.url,
        "BENTOML_HOME": str(scratch / f"bentoml-{name}"),
        "RECSYS_POLL_SECONDS": str(POLL_SECONDS),
        "RECSYS_ADMIN_TOKEN": secrets.token_urlsafe(16),
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])]),
    }


def log_excerpt(log: Path, limit: int = 40) -> list[str]:
    """The service log's error, warning and traceback lines (the last ``limit``)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line[:400] for line in lines if ERROR_LINE.search(line)][-limit:]


def admin_conninfo() -> str:
    admin = make_url(admin_url()).set(drivername="postgresql")
    return admin.render_as_string(hide_password=False)


class Databases:
    """PostgreSQL databases this run creates (``recsys_t_reliability_<pid>*``), all dropped."""

    def __init__(self) -> None:
        self.conninfo = admin_conninfo()
        self.created: list[str] = []

    def url(self, name: str) -> str:
        admin = make_url(admin_url()).set(drivername="postgresql")
        return admin.set(database=name).render_as_string(hide_password=False)

    def create(self, name: str, template: str | None = None) -> str:
        if not name.startswith(DB_PREFIX):
            raise ValueError(f"refusing to create {name!r}: not this run's prefix")
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5) as conn:
            conn.execute(statement)
        self.created.append(name)
        return self.url(name)

    def drop(self, name: str) -> None:
        if name not in self.created or not name.startswith(DB_PREFIX):
            raise ValueError(f"refusing to drop {name!r}: this run did not create it")
        with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        self.created.remove(name)

    def terminate(self, name: str) -> int:
        """Terminate every backend connected to ``name``; how many were."""
        with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            ).fetchall()
        return sum(1 for (done,) in rows if done)

    def drop_all(self) -> None:
        for name in list(reversed(self.created)):
            try:
                self.drop(name)
            except psycopg.Error as exc:
                print(f"could not drop {name}: {exc}", flush=True)


def recsys_cli(*args: str, env: dict[str, str], timeout: float = 300) -> None:
    done = subprocess.run(
        [str(BIN / "recsys"), *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise RuntimeError(f"recsys {' '.join(args)} failed: {(done.stdout + done.stderr)[-800:]}")


# Load ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    sent: float
    done: float
    status: int | None  # None: transport error
    version: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status == 200


class Load:
    """C threads sending ``POST /recommend`` back to back until stopped."""

    def __init__(self, base: str, key: str, users: Sequence[str], clients: int, seed: int):
        self.base, self.key, self.users = base, key, list(users)
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(seed * 1000 + n,), daemon=True)
            for n in range(clients)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=REQUEST_TIMEOUT_S + 5)

    def _client(self, seed: int) -> None:
        rng = random.Random(seed)
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.base, headers=headers, timeout=REQUEST_TIMEOUT_S) as http:
            while not self._stop.is_set():
                body = {"user_id": rng.choice(self.users), "k": 10}
                sent = time.monotonic()
                try:
                    response = http.post("/recommend", json=body)
                except httpx.HTTPError as exc:
                    self.samples.append(
                        Sample(sent, time.monotonic(), None, None, f"{type(exc).__name__}: {exc}")
                    )
                    continue
                done = time.monotonic()
                if response.status_code == 200:
                    version = response.json().get("model_version")
                    self.samples.append(Sample(sent, done, 200, version, None))
                else:
                    text = f"HTTP {response.status_code}: {response.text[:300]}"
                    self.samples.append(Sample(sent, done, response.status_code, None, text))

    def wait_for(
        self, predicate: Callable[[Sample], bool], since: float, within: float
    ) -> float | None:
        """Seconds from ``since`` to the first response (sent after it) matching ``predicate``."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            hits = [s.done for s in list(self.samples) if s.sent >= since and predicate(s)]
            if hits:
                return min(hits) - since
            time.sleep(0.05)
        return None


def window(samples: Sequence[Sample], start: float, end: float) -> list[Sample]:
    """Requests that finished in ``[start, end)``."""
    return [s for s in samples if start <= s.done < end]


def error_samples(samples: Sequence[Sample], limit: int = 5) -> list[str]:
    counts = Counter(s.error or f"HTTP {s.status}" for s in samples if not s.ok)
    return [f"{n}x {text}" for text, n in counts.most_common(limit)]


# 1 and 2: fuzzing, champion swap and rollback -------------------------------------------------


def check_fuzz(base: str, home: Home, scratch: Path, args: argparse.Namespace) -> list[Result]:
    report = scratch / "schemathesis"
    command = [
        str(BIN / "st"),
        "--config-file",
        str(SCHEMATHESIS_CONFIG),
        "run",
        f"{base}/docs.json",
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {home.keys['admin']}",
        "--max-examples",
        str(args.sizes.fuzz_examples),
        "--seed",
        str(args.seed),
        "--workers",
        "2",
        "--request-timeout",
        "30",
        "--no-color",
        "--report",
        "ndjson,json",
        "--report-dir",
        str(report),
    ]
    print(f"  st run --checks all --max-examples {args.sizes.fuzz_examples} ...", flush=True)
    started = time.monotonic()
    done = subprocess.run(
        command, cwd=scratch, capture_output=True, text=True, timeout=1800, env=os.environ.copy()
    )
    seconds = time.monotonic() - started
    statuses: Counter[str] = Counter()
    failed_checks: Counter[str] = Counter()
    checks_run: Counter[str] = Counter()
    requests = 0
    for path in sorted(glob.glob(str(report / "*.ndjson"))):
        with open(path) as events:
            for line in events:
                event = json.loads(line)
                finished = event.get("ScenarioFinished")
                if not finished:
                    continue
                recorder = finished.get("recorder") or {}
                for interaction in (recorder.get("interactions") or {}).values():
                    requests += 1
                    response = interaction.get("response")
                    statuses[str(response["status_code"]) if response else "no response"] += 1
                for case_checks in (recorder.get("checks") or {}).values():
                    for check in case_checks:
                        checks_run[check["name"]] += 1
                        if check["status"] == "failure":
                            failed_checks[check["name"]] += 1
    summary: dict[str, Any] = {}
    for path in sorted(glob.glob(str(report / "*.json"))):
        with open(path) as handle:
            summary = json.load(handle)
    server_errors = sum(n for s, n in statuses.items() if s.startswith("5"))
    no_response = statuses.get("no response", 0)
    failures = sum(failed_checks.values())
    details = {
        "command": _scrubbed(
            " ".join(
                "Authorization: Bearer <admin key>" if c.startswith("Authorization") else c
                for c in command[1:]
            ),
            report,
        ),
        "exit_code": done.returncode,
        "seconds": round(seconds, 1),
        "requests": requests,
        "statuses": dict(sorted(statuses.items())),
        "checks_run": dict(sorted(checks_run.items())),
        "failed_checks": dict(sorted(failed_checks.items())),
        "test_cases": summary.get("test_cases"),
        "unique_failures": (summary.get("failures") or [])[:20],
        "errors": (summary.get("errors") or [])[:20],
        "stdout_tail": _scrubbed(
            done.stdout[-4000:] if done.returncode != 0 else done.stdout[-600:], report
        ),
    }
    broken = requests == 0 or (done.returncode != 0 and failures == 0 and server_errors == 0)
    statuses_text = ", ".join(f"{s}: {n:,}" for s, n in sorted(statuses.items()))
    print(f"  {requests:,} requests in {seconds:.0f}s ({statuses_text})", flush=True)
    if failed_checks:
        print(f"  failed checks: {dict(failed_checks)}", flush=True)
    if broken:
        print(f"  schemathesis exited {done.returncode}:\n{done.stdout[-3000:]}", flush=True)
    return [
        Result(
            "fuzz",
            "fuzzing: server errors",
            f"{server_errors:,} 5xx, {no_response} without a response, of {requests:,} requests",
            "0 5xx",
            None if broken else server_errors == 0 and no_response == 0,
            details,
        ),
        Result(
            "fuzz",
            "fuzzing: conformance (all checks)",
            f"{failures:,} failed checks"
            + (f" ({', '.join(f'{k} {v}' for k, v in failed_checks.items())})" if failures else "")
            + f", st exit {done.returncode}",
            "0 failed checks",
            None if broken else failures == 0 and done.returncode == 0,
        ),
    ]


def _scrubbed(text: str, report: Path) -> str:
    """Text for the results files: the repository and the scratch folder named, not shown."""
    return text.replace(str(report), "<reports>").replace(str(REPO_ROOT) + "/", "")


def check_swap(base: str, home: Home, args: argparse.Namespace) -> Result:
    engine = create_engine(home.url)
    hold = args.sizes.hold_s
    try:
        old = registry.alias_version(engine, registry.CHAMPION)
        assert old is not None
        with Load(base, home.keys["read"], home.users, args.sizes.clients, args.seed) as load:
            time.sleep(hold)
            trained_at = time.monotonic()
            new = train_version(engine, home.url, home.path, seed=1)
            train_s = time.monotonic() - trained_at
            print(f"  v{new} trained and registered under load in {train_s:.0f}s", flush=True)
            time.sleep(hold)
            promoted_at = time.monotonic()
            registry.promote(engine, new, actor="benchmark", reason="reliability swap")
            swap_s = load.wait_for(lambda s: s.version == new, promoted_at, SWAP_WITHIN_S)
            time.sleep(hold)
            rolled_at = time.monotonic()
            registry.rollback(engine, actor="benchmark", reason="reliability rollback")
            back_s = load.wait_for(lambda s: s.version == old, rolled_at, SWAP_WITHIN_S)
            time.sleep(hold)
            ended = time.monotonic()
        samples = load.samples
    finally:
        engine.dispose()

    def served(start: float, end: float, version: int) -> int:
        return sum(1 for s in window(samples, start, end) if s.ok and s.version == version)

    phases = []
    bounds = [
        ("before", samples[0].done if samples else 0.0, trained_at),
        ("training the new version", trained_at, promoted_at),
        (f"after promote v{new}", promoted_at, rolled_at),
        (f"after rollback to v{old}", rolled_at, ended + REQUEST_TIMEOUT_S),
    ]
    for name, start, end in bounds:
        inside = window(samples, start, end)
        phases.append(
            {
                "phase": name,
                "seconds": round(max(0.0, min(end, ended) - start), 1),
                "requests": len(inside),
                "failed": sum(1 for s in inside if not s.ok),
                f"from v{old}": served(start, end, old),
                f"from v{new}": served(start, end, new),
            }
        )
    # After the swap shows, the old version should not come back before the rollback.
    flapped = (
        sum(
            1
            for s in window(samples, promoted_at + swap_s + 0.5, rolled_at)
            if s.ok and s.version == old
        )
        if swap_s is not None
        else None
    )
    failed = [s for s in samples if not s.ok]
    details = {
        "old": old,
        "new": new,
        "clients": args.sizes.clients,
        "poll_seconds": POLL_SECONDS,
        "train_s": round(train_s, 1),
        "swap_s": None if swap_s is None else round(swap_s, 2),
        "rollback_s": None if back_s is None else round(back_s, 2),
        "requests": len(samples),
        "failed": len(failed),
        "old_version_after_swap": flapped,
        "phases": phases,
        "errors": error_samples(failed),
    }
    shown = lambda x: "never" if x is None else f"{x:.1f}s"  # noqa: E731
    measured = (
        f"{len(failed):,} failed of {len(samples):,}; v{new} served after {shown(swap_s)}, "
        f"v{old} again {shown(back_s)} after the rollback"
    )
    print(f"  {measured}", flush=True)
    for text in details["errors"]:
        print(f"    {text}", flush=True)
    ok = not failed and swap_s is not None and back_s is not None
    return Result("swap", "champion swap + rollback under load", measured, "0 failed", ok, details)


# 3: killed database connections -------------------------------------------------------------


def check_kill(
    databases: Databases, scratch: Path, args: argparse.Namespace
) -> tuple[Result, list[str]]:
    name = DB_PREFIX
    url = databases.create(name)
    path = scratch / "home-postgres"
    env = {k: v for k, v in os.environ.items()} | {
        "RECSYS_HOME": str(path),
        "RECSYS_DATABASE_URL": url,
    }
    print(f"  database {name}: recsys db upgrade, synthetic data, champion ...", flush=True)
    home = build_home(path, url, migrate=lambda _: recsys_cli("db", "upgrade", env=env))
    log = scratch / "logs" / "serve-postgres.log"
    kills: list[dict[str, Any]] = []
    with bentoml_serve(SERVICE, service_env(home, scratch, "postgres"), log) as running:
        print(f"  service ready in {running.startup_s:.0f}s at {running.base}", flush=True)
        with Load(
            running.base, home.keys["read"], home.users, args.sizes.clients, args.seed
        ) as load:
            time.sleep(args.sizes.hold_s)
            for _ in range(args.sizes.kills):
                at = time.monotonic()
                terminated = databases.terminate(name)
                kills.append({"at": at, "terminated": terminated})
                time.sleep(args.sizes.kill_every_s)
            ended = time.monotonic()
        samples = load.samples
    before = window(samples, 0.0, kills[0]["at"]) if kills else samples
    rows = []
    for n, kill in enumerate(kills):
        start = kill["at"]
        end = kills[n + 1]["at"] if n + 1 < len(kills) else ended + REQUEST_TIMEOUT_S
        inside = sorted(window(samples, start, end), key=lambda s: s.done)
        failed = [s for s in inside if not s.ok]
        last_failure = max((s.done for s in failed), default=start)
        recovered = next((s.done for s in inside if s.ok and s.done >= last_failure), None)
        rows.append(
            {
                "kill": n + 1,
                "backends_terminated": kill["terminated"],
                "requests": len(inside),
                "failed": len(failed),
                "recovery_s": None if recovered is None else round(recovered - start, 3),
                "errors": error_samples(failed),
            }
        )
    recoveries = [r["recovery_s"] for r in rows]
    ok = bool(rows) and all(r is not None and r <= RECOVERY_TARGET_S for r in recoveries)
    failed_total = sum(r["failed"] for r in rows)
    measured = (
        "recovery "
        + " / ".join("never" if r is None else f"{r:.2f}s" for r in recoveries)
        + f"; failed requests {' / '.join(str(r['failed']) for r in rows)}"
        + f" of {sum(r['requests'] for r in rows):,}"
    )
    print(f"  {measured}", flush=True)
    for row in rows:
        for text in row["errors"]:
            print(f"    kill {row['kill']}: {text}", flush=True)
    excerpt = log_excerpt(log) if failed_total or not ok else []
    details = {
        "database": "PostgreSQL (own database, dropped afterwards)",
        "clients": args.sizes.clients,
        "seconds_between_kills": args.sizes.kill_every_s,
        "requests_before_first_kill": len(before),
        "failed_before_first_kill": sum(1 for s in before if not s.ok),
        "kills": rows,
        "service_log_excerpt": excerpt,
    }
    result = Result(
        "kill",
        f"PostgreSQL connections killed {len(rows)}x under load",
        measured,
        f"recovery <= {RECOVERY_TARGET_S:g} s each time",
        ok,
        details,
    )
    return result, excerpt


# 4: corrupted import files ------------------------------------------------------------------

CORRUPTIONS = (
    "unterminated_quote",
    "stray_quote",
    "stray_separator",
    "nul",
    "invalid_utf8",
    "wrong_field_count",
    "truncated",
    "duplicate_rows",
    "line_separator_chars",
    "crlf",
)
INVALID_UTF8 = (b"\xff", b"\xc3(", b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf", b"\x80")
# Characters str.splitlines() (and some CSV readers) take as line ends; none ends a record.
SEPARATORS = tuple(
    c.encode() for c in ("\u2028", "\u2029", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85")
)
CSV_HEADER = b"user,item,ts,rating,kind"
KINDS = (b"view", b"click", b"purchase")
TOKEN_GAP = re.compile(rb"[ \t]+")


@dataclass
class CorruptFile:
    kind: str  # "csv" or "sequences"
    path: Path
    records: int  # records written before corruption
    physical: int  # non-empty record lines in the corrupted file
    corruptions: list[str]
    lines: list[bytes]  # the record lines as written (no line ends), line i + 2 (csv) / i + 1


def _inside(rng: random.Random, text: bytes, insert: bytes) -> bytes:
    """``insert`` strictly inside ``text`` (after at least one byte) when it can be."""
    at = rng.randint(1, len(text) - 1) if len(text) > 1 else len(text)
    return text[:at] + insert + text[at:]


def _corrupt_unit(rng: random.Random, corruption: str, unit: bytes, sequences: bool) -> bytes:
    """One field (csv) or token (sequences) with ``corruption`` applied."""
    if corruption == "unterminated_quote":
        return b'"' + unit  # opens a quoted field that no later quote can close
    if corruption == "stray_quote":
        # Never just before a separator or a line end, so it cannot close an open quote.
        return (
            _inside(rng, unit, b'"')
            if len(unit) > 1 and rng.random() < 0.6
            else b'"' + unit + b'"x'
        )
    if corruption == "nul":
        return _inside(rng, unit, b"\x00")
    if corruption == "invalid_utf8":
        return _inside(rng, unit, rng.choice(INVALID_UTF8))
    if corruption == "line_separator_chars":
        return _inside(rng, unit, rng.choice(SEPARATORS))
    if corruption == "stray_separator":
        return _inside(rng, unit, b"," if not sequences else rng.choice((b"\t", b"  ", b" \t ")))
    raise ValueError(corruption)


def _corrupt_line(rng: random.Random, corruption: str, line: bytes, sequences: bool) -> bytes:
    units = line.split(b" ") if sequences else line.split(b",")
    if corruption == "wrong_field_count":
        if sequences:
            return units[0] + rng.choice((b"", b" ", b"\t"))  # a user without items
        if rng.random() < 0.5 and len(units) > 1:
            del units[rng.randrange(len(units))]
        else:
            units.insert(rng.randrange(len(units) + 1), b"extra")
        return b",".join(units)
    if sequences and corruption == "stray_separator" and rng.random() < 0.5:
        return rng.choice((b" ", b"\t", b" \t")) + line + rng.choice((b" ", b"\t", b""))
    j = rng.randrange(len(units))
    units[j] = _corrupt_unit(rng, corruption, units[j], sequences)
    return (b" " if sequences else b",").join(units)


def make_file(
    rng: random.Random, kind: str, folder: Path, number: int, max_records: int
) -> CorruptFile:
    """A clean file of random records, then 1-4 corruptions of random kinds at random places."""
    sequences = kind == "sequences"
    count = rng.randint(5, max_records)
    lines: list[bytes] = []
    if sequences:
        for n in range(count):
            items = [f"i{rng.randrange(150)}".encode() for _ in range(rng.randint(1, 25))]
            lines.append(b" ".join([f"u{number}_{n}".encode(), *items]))
    else:
        seen: set[bytes] = set()
        while len(lines) < count:
            fields = [
                f"u{rng.randrange(60)}".encode(),
                f"i{rng.randrange(150)}".encode(),
                str(1_600_000_000 + rng.randrange(100_000_000)).encode(),
                str(rng.randint(1, 5)).encode(),
                rng.choice(KINDS),
            ]
            line = b",".join(fields)
            if line not in seen:
                seen.add(line)
                lines.append(line)
    chosen = rng.sample(CORRUPTIONS, rng.randint(1, 4))
    for corruption in chosen:
        if corruption in ("truncated", "crlf", "duplicate_rows"):
            continue
        for i in rng.sample(range(len(lines)), min(len(lines), rng.randint(1, 3))):
            lines[i] = _corrupt_line(rng, corruption, lines[i], sequences)
    if "duplicate_rows" in chosen:
        for _ in range(rng.randint(1, 3)):
            lines.insert(rng.randrange(len(lines) + 1), rng.choice(lines))
    crlf = "crlf" in chosen
    ends = [b"\r\n" if crlf and (rng.random() < 0.7) else b"\n" for _ in lines]
    if "truncated" in chosen:
        # Cut inside one of the last records (keeping at least one byte of it, and not right
        # after a quote, which could close an open one), dropping everything after it.
        i = rng.randrange(max(0, len(lines) - 5), len(lines))
        cut = rng.randint(1, max(1, len(lines[i]) - 1))
        if lines[i][cut - 1 : cut] == b'"':
            cut = cut - 1 if cut > 1 else cut + 1
        lines, ends = lines[: i + 1], ends[: i + 1]
        lines[i], ends[i] = lines[i][:cut], b""
    elif rng.random() < 0.3:
        ends[-1] = b""  # no line end after the last record
    body = b"".join(line + end for line, end in zip(lines, ends, strict=True))
    header = b"" if sequences else CSV_HEADER + (b"\r\n" if crlf else b"\n")
    path = folder / f"{kind}-{number:04d}.{'txt' if sequences else 'csv'}"
    path.write_bytes(header + body)
    physical = sum(1 for line in lines if line.rstrip(b"\r"))
    return CorruptFile(kind, path, count, physical, sorted(chosen), lines)


def expected_rows_read(file: CorruptFile, rejected_lines: set[int]) -> int:
    """What ``rows_read`` should be: the records of the file (see the module docstring)."""
    if file.kind == "csv":
        return file.physical
    total = 0
    for n, line in enumerate(file.lines, start=1):
        if not line.rstrip(b"\r"):
            continue
        tokens = TOKEN_GAP.split(line.rstrip(b"\r").strip(b" \t"))
        total += 1 if n in rejected_lines or len(tokens) < 2 else len(tokens) - 1
    return total


def import_file(file: CorruptFile, url: str, rejects: Path) -> dict[str, Any]:
    """Import ``file`` into ``url`` twice; the numbers of each import, or the error."""
    from recsys.data.importers import CsvColumns, import_events, import_sequences

    out: dict[str, Any] = {
        "file": file.path.name,
        "corruptions": file.corruptions,
        "records_written": file.records,
        "physical_records": file.physical,
    }
    engine = create_engine(url)
    try:
        for attempt in ("first", "again"):
            try:
                if file.kind == "csv":
                    batch = import_events(
                        file.path,
                        CsvColumns(
                            user="user", item="item", time="ts", value="rating", event_type="kind"
                        ),
                    )
                else:
                    batch = import_sequences(file.path)
                result = ingest(engine, batch, rejects)
            except Exception as exc:
                out[attempt] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                continue
            read, inserted = result.rows_read, result.rows_inserted
            stored, rejected = result.rows_skipped, result.rows_rejected
            lines = {r.line for r in batch.rejects}
            out[attempt] = {
                "rows_read": read,
                "inserted": inserted,
                "already_stored": stored,
                "rejected": rejected,
                "unaccounted": read - (inserted + stored + rejected),
                "expected_rows_read": expected_rows_read(file, lines),
                "rejects_by_reason": dict(result.rejects_by_reason),
            }
    finally:
        engine.dispose()
    return out


def _sqlite_copy(template: Path, target: Path) -> str:
    with sqlite3.connect(template) as source, sqlite3.connect(target) as copy:
        source.backup(copy)
    return f"sqlite:///{target}"


def check_import(
    databases: Databases | None, scratch: Path, args: argparse.Namespace
) -> list[Result]:
    rng = random.Random(args.seed)
    folder = scratch / "files"
    folder.mkdir()
    files = [
        make_file(rng, kind, folder, n, args.sizes.max_records)
        for kind in ("csv", "sequences")
        for n in range(args.sizes.files)
    ]
    template = scratch / "template.db"
    (scratch / "dbs").mkdir()
    migrated = create_engine(f"sqlite:///{template}")
    upgrade(migrated)
    migrated.dispose()
    with sqlite3.connect(template) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    targets: list[tuple[str, CorruptFile]] = [("sqlite", f) for f in files]
    if databases is not None:
        per_kind = args.sizes.postgres_files
        subset = [f for f in files if f.kind == "csv"][:per_kind]
        subset += [f for f in files if f.kind == "sequences"][:per_kind]
        targets += [("postgresql", f) for f in subset]
    print(
        f"  {len(files)} files ({args.sizes.files} csv + {args.sizes.files} sequences), "
        f"{sum(f.physical for f in files):,} records; {len(targets)} imports (+ again each)",
        flush=True,
    )
    pg_template = None
    if databases is not None:
        pg_template = f"{DB_PREFIX}_tmpl"
        upgrade(create_engine(databases.create(pg_template)))
    outcomes: list[dict[str, Any]] = []
    started = time.monotonic()
    for n, (backend, file) in enumerate(targets):
        if backend == "sqlite":
            url = _sqlite_copy(template, scratch / "dbs" / f"{n}.db")
            outcome = import_file(file, url, scratch / "rejects")
        else:
            assert databases is not None and pg_template is not None
            name = f"{DB_PREFIX}_imp{n}"
            url = databases.create(name, template=pg_template)
            try:
                outcome = import_file(file, url, scratch / "rejects")
            finally:
                databases.drop(name)
        outcome |= {"backend": backend, "kind": file.kind}
        outcomes.append(outcome)
    seconds = time.monotonic() - started

    def unaccounted(o: dict[str, Any], which: str) -> int:
        numbers = o[which]
        return o["physical_records"] if "error" in numbers else abs(numbers["unaccounted"])

    def physical_gap(o: dict[str, Any]) -> int:
        numbers = o["first"]
        if "error" in numbers:
            return o["physical_records"]
        return abs(numbers["expected_rows_read"] - numbers["rows_read"])

    refused = [o for o in outcomes if "error" in o["first"] or "error" in o["again"]]
    gap = sum(unaccounted(o, "first") + unaccounted(o, "again") for o in outcomes)
    physical = sum(physical_gap(o) for o in outcomes)
    reinserted = sum(o["again"].get("inserted", 0) for o in outcomes)
    by_backend = []
    for backend in ("sqlite", "postgresql"):
        mine = [o for o in outcomes if o["backend"] == backend]
        for kind in ("csv", "sequences"):
            these = [o for o in mine if o["kind"] == kind]
            if not these:
                continue
            firsts = [o["first"] for o in these if "error" not in o["first"]]
            by_backend.append(
                {
                    "backend": backend,
                    "kind": kind,
                    "files": len(these),
                    "physical_records": sum(o["physical_records"] for o in these),
                    "rows_read": sum(f["rows_read"] for f in firsts),
                    "expected_rows_read": sum(f["expected_rows_read"] for f in firsts),
                    "inserted": sum(f["inserted"] for f in firsts),
                    "already_stored": sum(f["already_stored"] for f in firsts),
                    "rejected": sum(f["rejected"] for f in firsts),
                    "unaccounted": sum(
                        unaccounted(o, "first") + unaccounted(o, "again") for o in these
                    ),
                    "read_vs_records": sum(physical_gap(o) for o in these),
                    "files_refused": sum(1 for o in these if "error" in o["first"]),
                    "inserted_again": sum(o["again"].get("inserted", 0) for o in these),
                }
            )
    by_corruption = []
    for corruption in CORRUPTIONS:
        these = [o for o in outcomes if corruption in o["corruptions"]]
        bad = [
            o
            for o in these
            if unaccounted(o, "first") or unaccounted(o, "again") or physical_gap(o)
        ]
        by_corruption.append(
            {"corruption": corruption, "files": len(these), "files_with_a_gap": len(bad)}
        )
    reasons: Counter[str] = Counter()
    for o in outcomes:
        reasons.update(o["first"].get("rejects_by_reason", {}))
    worst = sorted(
        (
            o
            for o in outcomes
            if unaccounted(o, "first") or unaccounted(o, "again") or physical_gap(o)
        ),
        key=lambda o: -(unaccounted(o, "first") + physical_gap(o)),
    )
    details = {
        "seed": args.seed,
        "files": len(files),
        "imports": len(targets),
        "seconds": round(seconds, 1),
        "records_written": sum(f.records for f in files),
        "physical_records": sum(f.physical for f in files),
        "by_backend_and_kind": by_backend,
        "by_corruption": by_corruption,
        "rejects_by_reason": dict(sorted(reasons.items())),
        "files_refused": [
            {"file": o["file"], "backend": o["backend"], "first": o["first"], "again": o["again"]}
            for o in refused[:20]
        ],
        "files_with_a_gap": len(worst),
        "worst_files": worst[:15],
    }
    if args.keep_files is not None:
        args.keep_files.mkdir(parents=True, exist_ok=True)
        for file in files:
            shutil.copy2(file.path, args.keep_files / file.path.name)
        (args.keep_files / "manifest.json").write_text(json.dumps(outcomes, indent=2) + "\n")
        details["kept_in"] = str(args.keep_files)
    print(
        f"  {len(targets)} imports in {seconds:.0f}s: unaccounted {gap:,}, rows_read vs records "
        f"{physical:,}, files refused {len(refused)}, inserted on re-import {reinserted:,}",
        flush=True,
    )
    for o in worst[:5]:
        print(f"    {o['backend']} {o['file']} {o['corruptions']}: {o['first']}", flush=True)
    records = sum(f.physical for f in files)
    return [
        Result(
            "import",
            "corrupted files: records unaccounted for",
            f"{gap:,} (|read - inserted - stored - rejected|, {len(targets)} files x 2 imports"
            f"{f', {len(refused)} refused' if refused else ''})",
            "0",
            gap == 0 and not refused,
            details,
        ),
        Result(
            "import",
            "corrupted files: rows_read vs records in the file",
            f"{physical:,} off ({records:,} records in {len(files)} files; "
            f"{sum(1 for o in outcomes if physical_gap(o))} files differ)",
            "0",
            physical == 0,
        ),
    ]


# 5: concurrent retrains ---------------------------------------------------------------------


def check_retrain(scratch: Path, args: argparse.Namespace) -> Result:
    home = scratch / "home-retrain"
    drop = ("PREFECT_API_URL", "PREFECT_HOME", "RECSYS_DATABASE_URL", "RECSYS_SERVICE_URL")
    env = {k: v for k, v in os.environ.items() if k not in drop} | {
        "RECSYS_HOME": str(home),
        "PREFECT_HOME": str(scratch / "prefect-home"),
        "RECSYS_TRAIN_WORKERS": "1",
        "RECSYS_THREADS": "1",
    }
    recsys_cli("db", "upgrade", env=env)
    recsys_cli("generate", "synthetic", *RETRAIN_DATA, env=env)
    command = [str(BIN / "recsys"), "retrain", "--models", RETRAIN_MODELS, "--json"]
    print(f"  two `recsys retrain --models {RETRAIN_MODELS}` at once, a fresh PREFECT_HOME")
    logs = [scratch / "logs" / f"retrain-{n + 1}.log" for n in range(2)]
    logs[0].parent.mkdir(parents=True, exist_ok=True)
    finished: dict[int, float] = {}
    with ExitStack() as stack:
        outs = [stack.enter_context(log.open("wb")) for log in logs]
        started = time.monotonic()
        processes = [
            subprocess.Popen(
                command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
            for out in outs
        ]
        stack.callback(_stop_groups, processes)
        while len(finished) < len(processes):
            for n, process in enumerate(processes):
                if n not in finished and process.poll() is not None:
                    finished[n] = time.monotonic() - started
            if time.monotonic() - started > RETRAIN_TIMEOUT_S:
                break
            time.sleep(0.1)
    runs = []
    for n, (process, log) in enumerate(zip(processes, logs, strict=True)):
        text = log.read_text(errors="replace")
        lines = [line for line in text.splitlines() if line.strip()]
        last = lines[-1] if lines else ""
        try:
            parsed = json.loads(last)
        except json.JSONDecodeError:
            parsed = None
        status = parsed.get("status") if isinstance(parsed, dict) else None
        reason = parsed.get("reason") if isinstance(parsed, dict) else None
        if n not in finished:
            reason = f"still running after {RETRAIN_TIMEOUT_S:.0f}s; killed"
        runs.append(
            {
                "exit_code": process.returncode,
                "seconds": round(finished.get(n, RETRAIN_TIMEOUT_S), 1),
                "status": status,
                "reason": reason,
                "champion_after": parsed.get("champion_after")
                if isinstance(parsed, dict)
                else None,
                "last_line": last[:600],
                "output_tail": text[-3000:] if process.returncode != 0 or status is None else "",
            }
        )

    def already(run: dict[str, Any]) -> bool:
        return "already running" in f"{run['reason']} {run['last_line']}".lower()

    def completed(run: dict[str, Any]) -> bool:
        return run["exit_code"] == 0 and run["status"] not in (None, "skipped", "failed")

    ok = sorted([completed(r) for r in runs]) == [False, True] and any(
        already(r) for r in runs if not completed(r)
    )

    def summary(run: dict[str, Any]) -> str:
        said = "already running" if already(run) else (run["reason"] or run["last_line"])[:60]
        return f"exit {run['exit_code']} after {run['seconds']:.0f}s, {run['status']}: {said}"

    measured = "; ".join(f"run {n + 1}: {summary(r)}" for n, r in enumerate(runs))
    for n, run in enumerate(runs):
        print(
            f"  retrain {n + 1}: exit {run['exit_code']} after {run['seconds']}s: "
            f"{run['status']}: {run['reason'] or run['last_line'][:300]}",
            flush=True,
        )
        if run["output_tail"]:
            print("    " + run["output_tail"][-1500:].replace("\n", "\n    "), flush=True)
    return Result(
        "retrain",
        "two retrains started at once",
        measured,
        "one completes, one says already running",
        ok,
        {"command": shlex.join(["recsys", *command[1:]]), "runs": runs},
    )


def _stop_groups(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """Kill what is left of processes started in sessions of their own (and their children)."""
    for process in processes:
        if process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# Main ---------------------------------------------------------------------------------------


def _on_terminate(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM/SIGHUP unwind like Ctrl-C, through the servers' and databases' cleanup."""
    raise KeyboardInterrupt


@contextmanager
def attempt(results: list[Result], check: str, name: str, target: str) -> Iterator[None]:
    """Run one check; if the harness (or the product) raises, the row says so, as n/a."""
    try:
        yield
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        trace = traceback.format_exc()
        print(f"  {check} did not finish: {type(exc).__name__}: {exc}\n{trace}", flush=True)
        results.append(
            Result(
                check,
                name,
                f"did not finish: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                if str(exc)
                else f"did not finish: {type(exc).__name__}",
                target,
                False,
                {"error": str(exc)[:4000], "traceback": trace[-4000:]},
            )
        )


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("recsys").setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _on_terminate)
    signal.signal(signal.SIGHUP, _on_terminate)
    info = machine_info(SOURCES)
    info["load_average"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results: list[Result] = []
    excerpts: dict[str, list[str]] = {}
    started = time.monotonic()
    postgres = not args.skip_postgres and bool({"kill", "import"} & set(args.checks))
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="recsys_rel_")))
        databases: Databases | None = None
        if postgres:
            try:
                databases = Databases()
                with psycopg.connect(databases.conninfo, connect_timeout=5):
                    pass
                stack.callback(databases.drop_all)
            except psycopg.Error as exc:
                print(f"PostgreSQL unreachable ({exc}); its checks are skipped", flush=True)
                databases = None

        if {"fuzz", "swap"} & set(args.checks):
            print("\n[1, 2] service on SQLite: fuzzing, champion swap and rollback", flush=True)
            with attempt(results, "fuzz", "fuzzing / swap", "0 5xx, 0 failed"):
                home = build_home(scratch / "home-sqlite", f"sqlite:///{scratch / 'sqlite.db'}")
                log = scratch / "logs" / "serve-sqlite.log"
                with bentoml_serve(SERVICE, service_env(home, scratch, "sqlite"), log) as running:
                    print(f"  service ready in {running.startup_s:.0f}s at {running.base}")
                    if "fuzz" in args.checks:
                        with attempt(results, "fuzz", "fuzzing", "0 5xx, 0 failed checks"):
                            results += check_fuzz(running.base, home, scratch, args)
                    if "swap" in args.checks:
                        with attempt(results, "swap", "champion swap + rollback", "0 failed"):
                            results.append(check_swap(running.base, home, args))
                excerpt = log_excerpt(log)
                if any(r.ok is False for r in results):
                    excerpts["sqlite service"] = excerpt
        if "kill" in args.checks:
            print("\n[3] service on PostgreSQL: connections killed under load", flush=True)
            target = f"recovery <= {RECOVERY_TARGET_S:g} s each time"
            if databases is None:
                results.append(
                    Result("kill", "PostgreSQL connections killed", "skipped", target, None)
                )
            else:
                with attempt(results, "kill", "PostgreSQL connections killed", target):
                    result, excerpt = check_kill(databases, scratch, args)
                    results.append(result)
                    if excerpt:
                        excerpts["postgres service"] = excerpt
        if "import" in args.checks:
            print("\n[4] corrupted import files", flush=True)
            with attempt(results, "import", "corrupted files", "0 unaccounted"):
                results += check_import(databases, scratch, args)
        if "retrain" in args.checks:
            print("\n[5] concurrent retrains", flush=True)
            with attempt(results, "retrain", "two retrains at once", "one runs, one refused"):
                results.append(check_retrain(scratch, args))
    elapsed = time.monotonic() - started
    report(args, info, results, excerpts, elapsed)


def report(
    args: argparse.Namespace,
    info: dict[str, Any],
    results: list[Result],
    excerpts: dict[str, list[str]],
    elapsed: float,
) -> None:
    headers = ("check", "measured", "target", "verdict")
    rows = [r.cells(n) for n, r in enumerate(results, start=1)]
    print()
    print(format_table(headers, rows))
    failed = [r for r in results if r.ok is False]
    print(f"\n{len(results) - len(failed)} of {len(results)} targets hold; run took {elapsed:.0f}s")
    for r in failed:
        print(f"FAILED: {r.name}: {r.measured} (target {r.target})")
    for where, lines in excerpts.items():
        if lines:
            print(f"\n{where} log (errors and warnings, last {len(lines)} lines):")
            print("\n".join(f"  {line}" for line in lines))

    info = {**info, "seconds": round(elapsed, 1), "sizes": asdict(args.sizes)}
    details = {r.check + ": " + r.name: r.details for r in results if r.details}
    tables: list[tuple[str, Sequence[str], Sequence[Sequence[str]]]] = [("Targets", headers, rows)]
    for r in results:
        if r.check == "swap" and r.details.get("phases"):
            phases = r.details["phases"]
            keys = list(phases[0])
            tables.append(
                ("Champion swap and rollback", keys, [[str(p[k]) for k in keys] for p in phases])
            )
        if r.check == "kill" and r.details.get("kills"):
            keys = ["kill", "backends_terminated", "requests", "failed", "recovery_s"]
            tables.append(
                (
                    "Killed connections",
                    keys,
                    [[str(k[c]) for c in keys] for k in r.details["kills"]],
                )
            )
        if r.check == "import" and r.details.get("by_backend_and_kind"):
            parts = r.details["by_backend_and_kind"]
            keys = list(parts[0])
            tables.append(
                (
                    "Corrupted files by backend and kind",
                    keys,
                    [[str(p[k]) for k in keys] for p in parts],
                )
            )
            corr = r.details["by_corruption"]
            tables.append(
                (
                    "Corrupted files by corruption (a file has 1-4)",
                    list(corr[0]),
                    [[str(v) for v in c.values()] for c in corr],
                )
            )
        if r.check == "retrain" and r.details.get("runs"):
            keys = ["exit_code", "seconds", "status", "reason"]
            tables.append(
                (
                    "Concurrent retrains",
                    ["run", *keys],
                    [
                        [str(n + 1), *(str(run[k]) for k in keys)]
                        for n, run in enumerate(r.details["runs"])
                    ],
                )
            )
    notes = [
        "A measurement, not a test: each target says what should hold; FAIL rows are defects "
        "to fix (see the JSON file for the error samples, service log excerpts and the worst "
        "files).",
        f"Load: {args.sizes.clients} client threads, POST /recommend back to back with a read "
        f"key; a request fails on a non-200 or a transport error ({REQUEST_TIMEOUT_S:g} s "
        "timeout). The service polls the champion alias every "
        f"{POLL_SECONDS:g} s.",
        "Recovery after a kill: seconds from the kill to the first successful response after "
        "which no request failed until the next kill.",
        "Corrupted files: a record is a non-empty line (only \\n and \\r\\n end one); the "
        "script writes no field that may span lines, and places its stray quotes where they "
        "cannot close an opened one. A sequence line kept counts as its events. Each file is "
        "imported twice into the same fresh database; both imports are counted.",
    ]
    if args.quick:
        notes.append("--quick: a smoke run, not a measurement to quote.")
    name = "reliability-smoke" if args.quick or len(args.checks) < len(CHECKS) else "reliability"
    json_path, md_path = write_results(
        name,
        "Reliability: fuzzing, champion swaps, killed connections, bad files, races",
        info,
        {
            "config": {
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in vars(args).items()
                if k != "sizes"
            },
            "targets": [
                {
                    "check": r.check,
                    "name": r.name,
                    "measured": r.measured,
                    "target": r.target,
                    "verdict": "n/a" if r.ok is None else verdict(r.ok),
                }
                for r in results
            ],
            "details": details,
            "service_log_excerpts": excerpts,
        },
        tables,
        notes,
    )
    print(f"\nwrote {json_path}, {md_path}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped and databases dropped", file=sys.stderr)
        sys.exit(130)
