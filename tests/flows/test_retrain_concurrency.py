"""Two `recsys retrain` processes started at once on a fresh Prefect home, as a user would.

Without PREFECT_API_URL every flow process starts a temporary Prefect server that migrates
the SQLite database in PREFECT_HOME on startup; two at once on a fresh home used to race
and both fail with "Timed out while attempting to connect to ephemeral Prefect API server".
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

import flows.retrain as retrain_module
from recsys import registry
from recsys.db import locks
from recsys.db.engine import create_engine
from recsys.db.schema import locks_table

TEMPORARY_SERVER = "Starting temporary server"


@pytest.mark.slow
def test_two_retrains_at_once_on_a_fresh_prefect_home_one_runs_the_other_says_so(
    tmp_path: Path, small_home: dict[str, str]
) -> None:
    home = small_home
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "PREFECT_"))}
    env |= home | {
        "PREFECT_HOME": str(tmp_path / "prefect"),  # empty: its database is not created yet
        "RECSYS_TRAIN_WORKERS": "1",
        "RECSYS_THREADS": "1",
    }
    exe = Path(sys.executable).with_name("recsys")
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [str(exe), "retrain", "--models", "ease", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    elapsed = time.monotonic() - started
    by_status = {}
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, f"exit {proc.returncode}: {err.strip()[-2000:]}"
        result = json.loads(out.strip().splitlines()[-1])
        by_status[result["status"]] = (result, err)
    assert sorted(by_status) == ["promoted", "skipped"], by_status

    winner, _ = by_status["promoted"]
    loser, loser_err = by_status["skipped"]
    assert loser["reason"].startswith("retrain is already running: held by"), loser
    # The loser stops at the lock: it never starts a Prefect server of its own.
    assert TEMPORARY_SERVER not in loser_err
    assert loser["candidates"] == [] and loser["flow_run_id"] is None

    versions = registry.list_versions(create_engine(home["RECSYS_DATABASE_URL"]))
    assert [v.version for v in versions] == [winner["champion_after"]]
    assert elapsed < 240


def test_run_once_stops_at_the_lock_before_prefect_starts(
    small_home: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in small_home.items():
        monkeypatch.setenv(key, value)
    engine = create_engine(small_home["RECSYS_DATABASE_URL"])
    locks.acquire(engine, "retrain", holder="flow run other", ttl=timedelta(hours=1))

    def must_not_run(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("got past the lock")

    monkeypatch.setattr(retrain_module, "start_prefect_api", must_not_run)
    monkeypatch.setattr(retrain_module, "retrain_flow", must_not_run)
    result = retrain_module.run_once(models=["ease"])
    assert result["status"] == "skipped" and result["candidates"] == []
    assert result["reason"].startswith("retrain is already running: held by flow run other")
    assert result["champion_before"] is None and result["champion_after"] is None
    with engine.connect() as conn:  # the other holder's lock is left as it was
        assert [r.holder for r in conn.execute(select(locks_table))] == ["flow run other"]


def test_run_once_holds_the_lock_through_the_flow_and_releases_it(
    flow_home: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_engine(flow_home["RECSYS_DATABASE_URL"])
    seen: list[list[str]] = []
    real_extract = retrain_module.extract

    def extract(url: str, **options: Any) -> Any:
        with engine.connect() as conn:
            seen.append([r.holder for r in conn.execute(select(locks_table))])
        return real_extract(url, **options)

    monkeypatch.setattr(retrain_module, "extract", extract)
    result = retrain_module.run_once(models=["ease"])
    assert result["status"] == "promoted"
    # The entry point's lock covered the flow, whose own locks.held was a no-op.
    assert seen == [[f"retrain process {os.getpid()} on {socket.gethostname()}"]]
    with engine.connect() as conn:
        assert conn.execute(select(locks_table)).first() is None


START_AND_CALL = """
from flows.common import start_prefect_api
from prefect.client.orchestration import get_client

start_prefect_api()
with get_client(sync_client=True) as client:  # what a flow run does first
    assert client.api_healthcheck() is None
    print(client.api_url)
"""


@pytest.mark.slow
def test_two_flow_processes_at_once_on_a_fresh_prefect_home_both_start(tmp_path: Path) -> None:
    """Any two flows (not only retrains): start_prefect_api takes the server startups in turn.

    Without it (Prefect's own startup in both), this failed two runs in four here: "database
    is locked" or "Timed out while attempting to connect to ephemeral Prefect API server".
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "PREFECT_"))}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", START_AND_CALL],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=Path(__file__).parents[2],
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.strip()[-2000:]
    urls = {out.strip().splitlines()[-1] for out, _ in outputs}
    assert len(urls) == 2  # a server each, on a database migrated once
