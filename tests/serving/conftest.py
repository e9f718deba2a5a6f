"""A home with a registered, promoted SASRec champion on synthetic data, for serving tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine

from recsys import registry
from recsys.data.ingest import ingest
from recsys.data.synthetic import SyntheticConfig, generate
from recsys.db.engine import create_engine
from recsys.db.migrate import upgrade
from recsys.experiment import train_and_evaluate
from recsys.models.sasrec import SASRecConfig


@dataclass
class Home:
    path: Path
    url: str
    engine: Engine
    champion: int

    @property
    def env(self) -> dict[str, str]:
        return {"RECSYS_HOME": str(self.path), "RECSYS_DATABASE_URL": self.url}

    def register(self, name: str = "sasrec", promote: bool = False) -> int:
        config = SASRecConfig(embedding_dim=32, max_len=20) if name == "sasrec" else None
        outcome = train_and_evaluate(
            self.url,
            name,
            "loo",
            model_config=config,
            train_overrides={"max_epochs": 3, "threads": 1, "progress": False},
        )
        version = registry.register(
            self.engine, outcome, artifacts_dir=self.path / "artifacts"
        ).version
        if promote:
            registry.promote(self.engine, version, actor="tests", reason="serving fixture")
        return version


def make_home(path: Path) -> Home:
    url = f"sqlite:///{path / 'recsys.db'}"
    upgrade(url)
    engine = create_engine(url)
    batch = generate(SyntheticConfig(num_users=200, num_items=90, num_interactions=6000, seed=3))
    ingest(engine, batch, path / "rejects")
    home = Home(path, url, engine, champion=0)
    home.champion = home.register("sasrec", promote=True)
    return home


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    return make_home(tmp_path_factory.mktemp("serving") / "home")
