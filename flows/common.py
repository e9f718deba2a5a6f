"""What every flow shares: retrying only on transient database errors, settings, run ids,
freeing the database lock of a flow run that died, and starting the temporary Prefect server
one process at a time."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.runtime import flow_run
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from recsys.config import Settings, get_settings
from recsys.db import locks
from recsys.db.engine import create_engine

logger = logging.getLogger(__name__)

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
    """Threads for concurrent tasks: the ``train_workers`` setting, else half the cores."""
    from prefect.task_runners import ThreadPoolTaskRunner

    count = workers or get_settings().train_workers or 0
    return ThreadPoolTaskRunner(max_workers=count or max(1, (os.cpu_count() or 2) // 2))


def current_run_id() -> str | None:
    run_id = flow_run.get_id()
    return str(run_id) if run_id else None


# A lock taken by a flow run names it: "flow run <id>" (the retrain), "sync flow run <id>".
FLOW_RUN_HOLDER = re.compile(r"\bflow run ([0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12})$")


def run_holder(run_id: str | None) -> str:
    """The holder name of a lock this flow run takes (the process id outside a flow run)."""
    return f"flow run {run_id or os.getpid()}"


def free_lock_of_ended_run(engine: Engine, name: str) -> str | None:
    """Free lock ``name`` when its holder is a flow run that Prefect says has ended.

    A flow run killed with its worker (a container evicted, a machine lost) keeps its database
    lock until the lock's time to live runs out, hours for a retrain. Prefect marks such a run
    Crashed once its heartbeats stop (the automation ``recsys deploy`` creates), and a run in
    a final state holds nothing any more: its lock is freed here so the next run goes on.
    A holder that is not a flow run, a run this Prefect server does not know and a run still
    running keep the lock. Returns the holder freed and how its run ended, if one was.
    """
    holder = locks.holder(engine, name)
    match = FLOW_RUN_HOLDER.search(holder or "")
    if holder is None or match is None:
        return None
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(UUID(match.group(1)))
    except ObjectNotFound:
        return None
    if run.state is None or not run.state.is_final():
        return None
    if not locks.release(engine, name, holder=holder):
        return None  # freed or taken over meanwhile
    return f"{holder}, which ended {run.state.type.value}"


def print_result(run: Callable[[], Any]) -> None:
    """Entry points print one JSON line: the flow's result, or ``{"error": ...}`` and exit 1."""
    try:
        result = run()
    except Exception as exc:  # reported to the caller as one line; Prefect logged the rest
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)}))
        sys.exit(1)
    print(json.dumps(result, default=str))


STARTUP_LOCK_FILE = "recsys-ephemeral-startup.lock"
STARTUP_LOCK_WAIT_SECONDS = 600.0


def start_prefect_api() -> None:
    """Start this process's temporary Prefect server now, one process at a time per PREFECT_HOME.

    Nothing to do with PREFECT_API_URL set. Without it, the first Prefect call of each process
    starts a server of its own (``SubprocessASGIServer``) that migrates the SQLite database in
    PREFECT_HOME on startup, within PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS (20 s).
    Two processes at once on a fresh home race: both run Prefect's migrations on one database
    (one fails on "index ... already exists" and Prefect restarts it to migrate again), they
    wait on each other for SQLite's write lock, and both run out of time. Here, under a file
    lock in PREFECT_HOME, the database is migrated in this process (no deadline: it is the
    slow part on a fresh home) and only then the server started, so the flow finds it running
    and a second process waits its turn and starts its server on a database that is ready.
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return
    with _file_lock(Path(settings.home) / STARTUP_LOCK_FILE, STARTUP_LOCK_WAIT_SECONDS):
        if settings.server.database.migrate_on_start:
            from prefect.server.database import provide_database_interface

            asyncio.run(provide_database_interface().create_db())
        with get_client(sync_client=True) as client:  # starts the server, waits for its health
            client.api_healthcheck()


@contextmanager
def _file_lock(path: Path, wait_seconds: float) -> Iterator[None]:
    """An exclusive lock on ``path`` among this machine's processes; freed when its holder dies.

    After ``wait_seconds`` (a holder that hangs) the block runs anyway, as it would unlocked.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as before
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        locked = False
        deadline = time.monotonic() + wait_seconds
        while not locked:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
            except BlockingIOError:
                if time.monotonic() > deadline:
                    logger.warning("%s still locked after %.0f s: going on", path, wait_seconds)
                    break
                time.sleep(0.2)
        try:
            yield
        finally:
            if locked:
                fcntl.flock(handle, fcntl.LOCK_UN)
