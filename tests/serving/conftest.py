"""A home with a registered, promoted SASRec champion on synthetic data, for serving tests
(and one whose champion is served through its item index)."""

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

from recsys import registry
from recsys.data.ingest import ingest
from recsys.data.synthetic import SyntheticConfig, generate
from recsys.db.engine import create_engine
from recsys.db.migrate import upgrade
from recsys.experiment import train_and_evaluate
from recsys.models.sasrec import SASRecConfig
from recsys.registry import registration


@dataclass
class Home:
    path: Path
    url: str
    engine: Engine
    champion: int

    @property
    def env(self) -> dict[str, str]:
        return {"RECSYS_HOME": str(self.path), "RECSYS_DATABASE_URL": self.url}

    def register(
        self, name: str = "sasrec", promote: bool = False, ann_min_items: int | None = None
    ) -> int:
        """Train ``name`` briefly and register it; ``ann_min_items=1`` gives a sequence model
        its item index whatever the catalogue's size."""
        config = SASRecConfig(embedding_dim=32, max_len=20) if name == "sasrec" else None
        outcome = train_and_evaluate(
            create_engine(self.url),
            name,
            "loo",
            model_config=config,
            train_overrides={"max_epochs": 3, "threads": 1, "progress": False},
        )
        version = registration.register(
            self.engine, outcome, artifacts_dir=self.path / "artifacts", ann_min_items=ann_min_items
        ).version
        if promote:
            registry.promote(self.engine, version, actor="tests", reason="serving fixture")
        return version


def make_home(path: Path, ann_min_items: int | None = None) -> Home:
    url = f"sqlite:///{path / 'recsys.db'}"
    upgrade(create_engine(url))
    engine = create_engine(url)
    batch = generate(SyntheticConfig(num_users=200, num_items=90, num_interactions=6000, seed=3))
    ingest(engine, batch, path / "rejects")
    home = Home(path, url, engine, champion=0)
    home.champion = home.register("sasrec", promote=True, ann_min_items=ann_min_items)
    return home


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    return make_home(tmp_path_factory.mktemp("serving") / "home")


@pytest.fixture(scope="module")
def indexed_home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    """The same world, its SASRec champion registered with an item index (as a catalogue of
    RECSYS_ANN_MIN_ITEMS items or more would be)."""
    return make_home(tmp_path_factory.mktemp("indexed") / "home", ann_min_items=1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def bentoml_serve(
    target: str, env: dict[str, str], cwd: Path, log: Path, ready_within: float = 90
) -> Iterator[str]:
    """Run `bentoml serve TARGET` on a free port until ready; yield its URL; stop it after."""
    port = free_port()
    bentoml = Path(sys.executable).with_name("bentoml")
    command = [str(bentoml), "serve", target, "--port", str(port)]
    with running(command, port, env, cwd, log, ready_within) as base:
        yield base


@contextmanager
def running(
    command: list[str], port: int, env: dict[str, str], cwd: Path, log: Path, ready_within: float
) -> Iterator[str]:
    """Run a server command until its /readyz answers 200; yield its URL; stop it after."""
    with log.open("w") as out:
        process = subprocess.Popen(
            command, cwd=cwd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + ready_within
            while True:
                if process.poll() is not None:
                    pytest.fail(f"{command[0]} exited: {log.read_text()[-3000:]}")
                try:
                    if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"not ready in {ready_within:.0f} s: {log.read_text()[-3000:]}")
                time.sleep(0.3)
            yield base
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
