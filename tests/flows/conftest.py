"""Flow tests run against one temporary Prefect server for the session, on a home of their own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from recsys.data.ingest import ingest
from recsys.data.synthetic import SyntheticConfig, generate
from recsys.db.engine import create_engine
from recsys.db.migrate import upgrade


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def make_flow_home(
    path: Path, *, users: int = 200, items: int = 80, events: int = 5000
) -> dict[str, str]:
    """A migrated SQLite home with synthetic events; returns its environment."""
    url = f"sqlite:///{path / 'recsys.db'}"
    upgrade(create_engine(url))
    engine = create_engine(url)
    batch = generate(
        SyntheticConfig(num_users=users, num_items=items, num_interactions=events, seed=2)
    )
    ingest(engine, batch, path / "rejects")
    engine.dispose()
    return {"RECSYS_HOME": str(path), "RECSYS_DATABASE_URL": url}


@pytest.fixture
def flow_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_server: None
) -> dict[str, str]:
    env = make_flow_home(tmp_path / "home")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RECSYS_TRAIN_WORKERS", "1")
    return env


@pytest.fixture
def small_home(tmp_path: Path) -> dict[str, str]:
    """A small home with data and nothing of Prefect's (for flows run as subprocesses)."""
    return make_flow_home(tmp_path / "home", users=120, items=50, events=3000)
