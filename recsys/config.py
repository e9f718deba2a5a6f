"""Settings read from the environment in one place; nothing happens at import time."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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


READ_AUTH_CHOICES = ("required", "open")
# Clock skew allowed to an event recorded through the API (a file import allows a day).
DEFAULT_FUTURE_TOLERANCE_SECONDS = 300.0
UNKNOWN_ITEM_CHOICES = ("reject", "create")


@dataclass(frozen=True)
class ServingSettings:
    """How the prediction API guards itself; each field has a ``RECSYS_`` variable.

    ``read_auth``: ``required`` (default: every endpoint needs a key) or ``open`` (reads need
    none; writes and admin still do). ``unknown_items``: what ``events`` does with an item
    id the catalogue lacks, ``reject`` (default) or ``create``. Events more than
    ``future_tolerance_seconds`` ahead of the server's clock are refused. Bodies over
    ``max_body_bytes``, or not received within ``body_timeout_seconds``, are refused.
    """

    admin_token: str | None = None
    read_auth: str = "required"
    unknown_items: str = "reject"
    future_tolerance_seconds: float = DEFAULT_FUTURE_TOLERANCE_SECONDS
    max_body_bytes: int = 1_048_576
    body_timeout_seconds: float = 10.0
    poll_seconds: float = 10.0
    reload_retry_seconds: float = 60.0
    scorer_threads: int = 1
    model_source: str = "auto"


def get_serving_settings() -> ServingSettings:
    """Read the service's ``RECSYS_*`` variables; a bad value is a :class:`ValueError`."""
    env = os.environ

    def number(name: str, default: float, kind: type = float) -> Any:
        raw = env.get(name)
        if not raw:
            return default
        try:
            value = kind(raw)
        except ValueError:
            raise ValueError(f"{name} must be a number, got {raw!r}") from None
        if value < 0:
            raise ValueError(f"{name} must not be negative, got {raw!r}")
        return value

    def choice(name: str, default: str, choices: tuple[str, ...]) -> str:
        value = (env.get(name) or default).strip().lower()
        if value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value

    return ServingSettings(
        admin_token=env.get("RECSYS_ADMIN_TOKEN") or None,
        read_auth=choice("RECSYS_READ_AUTH", "required", READ_AUTH_CHOICES),
        unknown_items=choice("RECSYS_UNKNOWN_ITEMS", "reject", UNKNOWN_ITEM_CHOICES),
        future_tolerance_seconds=number(
            "RECSYS_FUTURE_TOLERANCE_SECONDS", DEFAULT_FUTURE_TOLERANCE_SECONDS
        ),
        max_body_bytes=number("RECSYS_MAX_BODY_BYTES", 1_048_576, int),
        body_timeout_seconds=number("RECSYS_BODY_TIMEOUT_SECONDS", 10.0),
        poll_seconds=number("RECSYS_POLL_SECONDS", 10.0),
        reload_retry_seconds=number("RECSYS_RELOAD_RETRY_SECONDS", 60.0),
        scorer_threads=number("RECSYS_SCORER_THREADS", 1, int),
        model_source=choice("RECSYS_MODEL_SOURCE", "auto", ("auto", "registry", "bento")),
    )
