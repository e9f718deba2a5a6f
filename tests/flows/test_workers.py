"""A real `prefect server`, a process work pool, `recsys deploy` and real `prefect worker`
processes: the scheduled retrain runs on a worker, a worker killed mid-run (with the flow run
it started, as when its machine dies) leaves a Crashed run and a consistent registry, and the
next run succeeds on a new worker.

What happens when a worker dies, as seen here: the flow run stays Running (nothing in Prefect
watches the process), its database lock stays held and a registration it had begun stays an
invisible ``pending`` row. The run's heartbeats stop, so the automation ``recsys deploy``
created marks it Crashed; the next retrain then frees its lock and runs, and
``recsys models sweep`` clears the pending row.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import httpx
import psutil
import pytest
import sqlalchemy as sa
from prefect import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Scheduled

from recsys import registry
from recsys.db import locks
from recsys.db.engine import create_engine
from recsys.registry.housekeeping import sweep

POOL = "recsys-test"
CRASH_AFTER_SECONDS = 75  # runs beat every 30 s (Prefect's shortest): two may be late
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, check: Callable[[], T | None], timeout: float, every: float = 0.5) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"{what}: not within {timeout:.0f} s")


@contextmanager
def started(
    command: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` in a session of its own; on the way out it and what it started are ended."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        kill_tree(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            kill_tree(process.pid, signal.SIGKILL)
            process.wait()


def kill_tree(pid: int, sig: signal.Signals) -> list[int]:
    """Signal ``pid`` and every process it started (the flow runs a worker started are in
    sessions of their own, so its process group is not enough); the pids signalled."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    for process in tree:
        with suppress(psutil.NoSuchProcess):
            process.send_signal(sig)
    return [p.pid for p in tree]


def read_run(run_id: UUID) -> FlowRun:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def final_state(run_id: UUID, timeout: float) -> FlowRun:
    def ended() -> FlowRun | None:
        run = read_run(run_id)
        return run if run.state is not None and run.state.is_final() else None

    return wait_for(f"flow run {run_id} to end", ended, timeout, every=1.0)


def pending_versions(engine: sa.Engine, run_id: UUID) -> list[int]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT version FROM model_versions "
                    "WHERE status = 'pending' AND flow_run_id = :run"
                ),
                {"run": str(run_id)},
            ).scalars()
        )


@pytest.fixture
def stack(tmp_path: Path, small_home: dict[str, str]) -> Iterator[dict[str, Any]]:
    """A `prefect server` on a free port, with its own home; the environment to reach it."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "PREFECT_"))}
    env |= small_home | {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",  # workers look for due runs every second
        "RECSYS_TRAIN_WORKERS": "1",
        "RECSYS_THREADS": "1",
    }
    server = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    with started([*server, "--port", str(port), "--no-ui"], env, tmp_path / "server.log"):

        def healthy() -> bool:
            try:
                return httpx.get(f"{api}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for("prefect server start", healthy, 240)
        with temporary_settings({PREFECT_API_URL: api}):
            yield {"env": env, "logs": tmp_path, "home": small_home}


def run_cli(command: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{command}: {done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
@pytest.mark.integration
def test_a_worker_runs_the_scheduled_retrain_and_one_killed_mid_run_leaves_it_crashed(
    stack: dict[str, Any],
) -> None:
    env, logs = stack["env"], stack["logs"]
    bin_dir = Path(sys.executable).parent
    run_cli([str(bin_dir / "prefect"), "work-pool", "create", POOL, "--type", "process"], env)
    deploy = [str(bin_dir / "recsys"), "deploy", "--pool", POOL, "--models", "pop,ease"]
    options = ["--sync-cron", "off", "--monitor-cron", "off", "--batch-cron", "off"]
    run_cli([*deploy, *options, "--crash-after", str(CRASH_AFTER_SECONDS), "--json"], env)
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("retrain/nightly")
    assert deployment.work_pool_name == POOL
    engine = create_engine(stack["home"]["RECSYS_DATABASE_URL"])
    worker = [str(bin_dir / "prefect"), "worker", "start", "--pool", POOL]

    # 1. The cron's next run, made due now, runs on the worker and completes.
    def next_scheduled() -> FlowRun | None:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
            )
        scheduled = [r for r in runs if r.auto_scheduled and r.state_type == StateType.SCHEDULED]
        return min(
            scheduled,
            key=lambda r: r.expected_start_time or datetime.max.replace(tzinfo=UTC),
            default=None,
        )

    scheduled = wait_for("the scheduler to plan the nightly runs", next_scheduled, 120)
    assert scheduled.expected_start_time is not None
    assert (scheduled.expected_start_time.hour, scheduled.expected_start_time.minute) == (3, 0)
    with started([*worker, "--name", "first"], env, logs / "first.log") as first:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(
                scheduled.id, Scheduled(scheduled_time=datetime.now(UTC)), force=True
            )
        done = final_state(scheduled.id, 300)
        assert done.state is not None and done.state.type == StateType.COMPLETED, done.state
        assert (
            f"Worker 'first' submitting flow run '{scheduled.id}'"
            in (logs / "first.log").read_text()
        )
        before = registry.list_versions(engine)
        assert sorted(v.family for v in before) == ["ease", "pop"]
        assert {v.flow_run_id for v in before} == {str(scheduled.id)}
        champion = registry.alias_version(engine, registry.CHAMPION)
        assert champion is not None

        # 2. Another run; its worker dies with it while it registers a candidate.
        killed = run_deployment("retrain/nightly", parameters={"force": True}, timeout=0)
        holder = f"flow run {killed.id}"
        wait_for(
            "the run to take the retrain lock",
            lambda: locks.holder(engine, "retrain") == holder,
            240,
            every=0.1,
        )
        wait_for(
            "a registration to begin", lambda: pending_versions(engine, killed.id), 240, every=0.05
        )
        kill_tree(first.pid, signal.SIGKILL)
        first.wait(timeout=30)

    # What a dead worker leaves: the run still Running, its lock held, its registration
    # invisible, the registry and its champion as they were.
    running = read_run(killed.id)
    assert running.state is not None and running.state.type == StateType.RUNNING
    assert locks.holder(engine, "retrain") == holder
    assert registry.list_versions(engine) == before
    assert registry.alias_version(engine, registry.CHAMPION) == champion
    (half_registered,) = pending_versions(engine, killed.id)
    assert half_registered not in {v.version for v in registry.list_versions(engine)}

    # Its heartbeats stopped: the automation marks it Crashed.
    crashed = final_state(killed.id, CRASH_AFTER_SECONDS + 180)
    assert crashed.state is not None and crashed.state.type == StateType.CRASHED, crashed.state
    assert "heartbeat" in (crashed.state.message or "")

    # 3. The next run, on a new worker, frees the dead run's lock and succeeds.
    with started([*worker, "--name", "second"], env, logs / "second.log"):
        after = run_deployment("retrain/nightly", parameters={"force": True}, timeout=0)
        ended = final_state(after.id, 300)
    assert ended.state is not None and ended.state.type == StateType.COMPLETED, ended.state
    assert f"freed lock retrain of {holder}" in (logs / "second.log").read_text()
    assert locks.holder(engine, "retrain") is None
    versions = registry.list_versions(engine)
    assert {v.flow_run_id for v in versions} == {str(scheduled.id), str(after.id)}
    assert half_registered not in {v.version for v in versions}
    cleared = sweep(
        engine, Path(stack["home"]["RECSYS_HOME"]) / "artifacts", older_than=timedelta(0)
    )
    assert cleared["abandoned_versions"] == 1 and cleared["left_pending_versions"] == []
    engine.dispose()
