"""Apply and inspect the Alembic migrations in ``migrations/`` on a database's engine."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from recsys.errors import SchemaNotReadyError

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
ENGINE_ATTRIBUTE = "engine"  # migrations/env.py migrates the engine it finds here


def alembic_config(engine: Engine | None = None) -> Config:
    """An Alembic config pointing at this project's migrations and, when given, ``engine``."""
    if not (MIGRATIONS_DIR / "env.py").exists():
        raise SchemaNotReadyError(f"migrations folder not found at {MIGRATIONS_DIR}")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if engine is not None:
        config.attributes[ENGINE_ATTRIBUTE] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Migrate ``engine``'s database to ``revision``; returns the revision it is at afterwards."""
    command.upgrade(alembic_config(engine), revision)
    return current_revision(engine)


def downgrade(engine: Engine, revision: str = "base") -> None:
    command.downgrade(alembic_config(engine), revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def require_current(engine: Engine) -> None:
    """Fail with the command to run when the database is not at the latest migration."""
    current = current_revision(engine)
    head = head_revision()
    if current != head:
        raise SchemaNotReadyError(
            f"database schema is at {current or 'nothing'}, code expects {head}: "
            "run `recsys db upgrade`"
        )
