"""A small home built the way ``recsys demo`` builds its own: synthetic data written as CSV and
read back by the CSV importer (with a few bad rows, so there are rejects), then the retrain's
steps as the retrain flow calls them (snapshot, quality report, candidates, registration, the
gate, the report), without Prefect; and a running dashboard (``python -m ui``) on it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from recsys import registry, retrain
from recsys.data.extract import extract
from recsys.data.frames import write_csv
from recsys.data.import_kinds import EventFileOptions, read_import
from recsys.data.ingest import ingest
from recsys.data.splits import split
from recsys.data.synthetic import SyntheticConfig, generate
from recsys.data.validation import quality_report
from recsys.db.engine import create_engine
from recsys.db.migrate import upgrade
from recsys.experiment import train_and_evaluate
from recsys.models.sasrec import SASRecConfig
from recsys.pipeline import gate_candidate, register_and_gate

ROOT = Path(__file__).resolve().parents[2]
FAST = {"max_epochs": 3, "threads": 1, "progress": False}
BAD_ROWS = "u1,i1,view,not-a-time,\n,i2,view,1704067200000,\n"


@dataclass
class Home:
    path: Path
    url: str
    engine: Engine
    champion: int
    versions: list[int]

    @property
    def env(self) -> dict[str, str]:
        return {"RECSYS_HOME": str(self.path), "RECSYS_DATABASE_URL": self.url}


def build_home(path: Path, *, users: int = 150, items: int = 80, events: int = 4500) -> Home:
    """Data as the demo imports it, then one retrain of pop, EASE and a small SASRec: every
    candidate registered, the best gated against popularity (the champion), the others kept,
    and the run's report and quality report written to ``reports/``."""
    url = f"sqlite:///{path / 'recsys.db'}"
    upgrade(create_engine(url))
    engine = create_engine(url)
    batch = generate(SyntheticConfig(users, items, events, seed=42))
    files = write_csv(batch, path / "demo")
    with files["interactions"].open("a") as handle:
        handle.write(BAD_ROWS)
    options = EventFileOptions(
        user_col="user_id",
        item_col="item_id",
        time_col="occurred_at",
        rating_col="value",
        event_type_col="event_type",
        time_unit="ms",
        items=str(files["items"]),
        users=str(files["users"]),
    )
    ingest(engine, read_import("csv", files["interactions"], options), path / "rejects")

    summary = retrain.begin(engine, None)
    snapshot = extract(engine)
    quality = quality_report(snapshot)
    step = retrain.check_data(engine, summary, snapshot.descriptor, quality)
    data = split(snapshot, "loo")
    outcomes = [
        train_and_evaluate(
            engine,
            name,
            "loo",
            snapshot=snapshot,
            data=data,
            model_config=SASRecConfig(embedding_dim=16, max_len=20) if name == "sasrec" else None,
            train_overrides=FAST,
        )
        for name in ("pop", "ease", "sasrec")
    ]
    actor = retrain.gate_actor(None)
    records = [
        register_and_gate(
            engine, outcome, artifacts_dir=path / "artifacts", actor=actor, gate=False
        ).record
        for outcome in outcomes
    ]
    step = retrain.check_exports(engine, step.summary, outcomes, records)
    best = records.index(next(r for r in records if r.family == "ease"))
    decision = gate_candidate(engine, records[best].version, outcomes[best], actor=actor)
    summary = retrain.conclude(engine, step.summary, outcomes[best], records[best], decision)
    retrain.write_report(summary, quality, decision, home=path)
    champion = registry.alias_version(engine, registry.CHAMPION)
    assert champion == records[best].version, decision.reason
    return Home(path, url, engine, champion, [r.version for r in records])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(
    command: list[str], env: dict[str, str], log: Path, ready: str, within: float = 120
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server until ``ready`` (a URL) answers 200; stop it afterwards."""
    with log.open("w") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + within
        while True:
            if process.poll() is not None:
                pytest.fail(f"{command[:3]} exited: {log.read_text()[-3000:]}")
            try:
                if httpx.get(ready, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"not ready in {within:.0f} s: {log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def ui_command(port: int) -> list[str]:
    """What ``recsys ui --port PORT`` runs (see recsys.cli.runner.ui_command)."""
    return [sys.executable, "-m", "ui", "--host", "127.0.0.1", "--port", str(port)]
