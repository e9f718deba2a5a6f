"""Settings read from the environment in one place; nothing happens at import time."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    """Where recsys keeps its state.

    ``home`` holds the embedded database, model artifacts, rejects files and reports.
    ``database_url`` is the SQLAlchemy URL of the interactions + registry database.
    """

    home: Path
    database_url: str

    @property
    def rejects_dir(self) -> Path:
        return self.home / "rejects"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"


def get_settings() -> Settings:
    """Read ``RECSYS_HOME`` and ``RECSYS_DATABASE_URL`` (defaults: ``./.recsys``, SQLite in it)."""
    home = Path(os.environ.get("RECSYS_HOME") or ".recsys").expanduser().resolve()
    url = os.environ.get("RECSYS_DATABASE_URL") or f"sqlite:///{home / 'recsys.db'}"
    return Settings(home=home, database_url=url)
