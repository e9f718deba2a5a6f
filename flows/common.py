"""What every flow shares: retrying only on transient database errors, settings, run ids."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

from prefect.runtime import flow_run
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from recsys.config import Settings, get_settings
from recsys.db.engine import create_engine

DB_RETRIES = 3
DB_RETRY_DELAYS: list[float] = [1.0, 2.0, 4.0]


def transient_database_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry condition: a lost connection or a busy database, not a bug or bad data."""
    error = state.result(raise_on_failure=False)
    if isinstance(error, OperationalError):
        return True
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)


def settings_and_engine() -> tuple[Settings, Engine]:
    """Settings and an engine on a database migrated to the code's schema (else a clear error)."""
    from recsys.db.migrate import require_current

    settings = get_settings()
    engine = create_engine(settings.database_url)
    require_current(engine)
    return settings, engine


def task_runner(workers: int | None = None) -> Any:
    """Threads for concurrent tasks: RECSYS_TRAIN_WORKERS, else half the cores (at least 1)."""
    from prefect.task_runners import ThreadPoolTaskRunner

    count = workers or int(os.environ.get("RECSYS_TRAIN_WORKERS") or 0)
    return ThreadPoolTaskRunner(max_workers=count or max(1, (os.cpu_count() or 2) // 2))


def current_run_id() -> str | None:
    run_id = flow_run.get_id()
    return str(run_id) if run_id else None


def print_result(run: Callable[[], Any]) -> None:
    """Entry points print one JSON line: the flow's result, or ``{"error": ...}`` and exit 1."""
    try:
        result = run()
    except Exception as exc:  # reported to the caller as one line; Prefect logged the rest
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)}))
        sys.exit(1)
    print(json.dumps(result, default=str))
