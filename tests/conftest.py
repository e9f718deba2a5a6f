"""Shared fixtures: one parametrized database fixture runs store tests on SQLite and PostgreSQL.

PostgreSQL tests need ``RECSYS_TEST_POSTGRES_URL`` (a database on a server where the role may
create databases; each test gets a fresh database of its own). Without it they skip with a
reason, except under CI (``CI`` set), where a missing PostgreSQL fails the run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import torch
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from recsys.db.engine import create_engine
from recsys.db.migrate import upgrade

# Real datasets live beside the checkout (never inside it); RECSYS_DATASETS points elsewhere.
SHARED_DATA = Path(
    os.environ.get("RECSYS_DATASETS") or Path(__file__).resolve().parents[2] / "shared" / "data"
)
POSTGRES_ENV = "RECSYS_TEST_POSTGRES_URL"
BACKENDS = ["sqlite", "postgresql"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` skip, saying why, where PyTorch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    reason = f"needs a CUDA device: torch {torch.__version__} sees none"
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def shared_dataset() -> Callable[[str], Path]:
    """Path to a real dataset in the shared data folder beside the checkout, or skip with why."""

    def find(name: str) -> Path:
        path = SHARED_DATA / name
        if not path.exists():
            pytest.skip(f"dataset {name} not found at {path} (the shared data folder is absent)")
        return path

    return find


def _postgres_base_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if url:
        return url
    if os.environ.get("CI"):
        pytest.fail(f"{POSTGRES_ENV} is not set under CI: PostgreSQL tests must run there")
    pytest.skip(f"{POSTGRES_ENV} not set: PostgreSQL-backed tests need a server")


def _admin(url: str) -> psycopg.Connection:
    parsed = make_url(url).set(drivername="postgresql")
    return psycopg.connect(parsed.render_as_string(hide_password=False), autocommit=True)


@pytest.fixture(scope="session")
def postgres_server() -> str:
    url = _postgres_base_url()
    try:
        _admin(url).close()
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL at {POSTGRES_ENV} is unreachable: {exc}".splitlines()[0]
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return url


@pytest.fixture
def fresh_postgres_url(postgres_server: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"recsys_t_{uuid.uuid4().hex[:12]}"
    with _admin(postgres_server) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(postgres_server).set(database=name, drivername="postgresql+psycopg")
    yield url.render_as_string(hide_password=False)
    with _admin(postgres_server) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=BACKENDS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database URL (not migrated) on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'recsys.db'}"
    return str(request.getfixturevalue("fresh_postgres_url"))


@pytest.fixture
def database_url(empty_database_url: str) -> str:
    """A migrated database URL on each backend."""
    upgrade(create_engine(empty_database_url))
    return empty_database_url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def recsys_env(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """Point RECSYS_HOME and RECSYS_DATABASE_URL at this test's home and database."""
    home = tmp_path / "home"
    monkeypatch.setenv("RECSYS_HOME", str(home))
    monkeypatch.setenv("RECSYS_DATABASE_URL", database_url)
    return {"RECSYS_HOME": str(home), "RECSYS_DATABASE_URL": database_url}


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and do not stall when other jobs hold the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
