"""The scheduled deployments (retrain, sources sync) on a temporary Prefect server: their
settings and a real run of each."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import sqlalchemy as sa
from prefect import get_client
from prefect.client.schemas.objects import ConcurrencyLimitStrategy, FlowRun
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.runner import RunnerDeployment
from prefect.runner import Runner

import flows.deploy as deploy_module
from flows.deploy import retrain_deployment, schedule, sync_deployment, tune_deployment
from recsys import registry
from recsys.db.engine import create_engine
from recsys.errors import RecsysError
from recsys.sources.config import SourceConfigError

from ..recsys.sources.conftest import fill, write_sources

RUN_TIMEOUT = 300.0


def read_deployment(deployment_id: UUID) -> Any:
    with get_client(sync_client=True) as client:
        return client.read_deployment(deployment_id)


async def trigger_and_serve_once(deployment: RunnerDeployment) -> FlowRun:
    """Register ``deployment`` on a runner, trigger one run now and let the runner execute it.

    ``start(run_once=True)`` polls once, starts the due run in a ``python -m prefect.engine``
    subprocess (as ``prefect.serve`` would) and returns when that process has exited.
    """
    runner = Runner(name="test-deploy", pause_on_shutdown=False)
    deployment_id = await runner.aadd_deployment(deployment)
    async with get_client() as client:
        flow_run = await client.create_flow_run_from_deployment(deployment_id)
        await asyncio.wait_for(runner.start(run_once=True, webserver=False), RUN_TIMEOUT)
        return await client.read_flow_run(flow_run.id)


@pytest.mark.slow
def test_retrain_deployment_registers_schedule_limit_and_parameters_and_runs_a_retrain(
    flow_home: dict[str, str],
) -> None:
    deployment = retrain_deployment(name="test-run", cron="0 3 * * *", models=["pop", "ease"])
    deployment_id = deployment.apply()
    assert isinstance(deployment_id, UUID)

    stored = read_deployment(deployment_id)
    assert stored.name == "test-run" and stored.entrypoint == "flows.retrain.retrain_flow"
    (schedule,) = stored.schedules
    assert isinstance(schedule.schedule, CronSchedule) and schedule.active
    assert schedule.schedule.cron == "0 3 * * *" and schedule.schedule.timezone == "UTC"
    assert stored.global_concurrency_limit is not None
    assert stored.global_concurrency_limit.limit == 1
    assert stored.concurrency_options is not None
    assert stored.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW
    assert stored.parameters == {
        "models": ["pop", "ease"],
        "split": "loo",
        "margin": 0.0,
        "force": False,
    }
    assert {"recsys", "retrain"} <= set(stored.tags) and "pop, ease" in stored.description

    flow_run = asyncio.run(trigger_and_serve_once(deployment))
    assert flow_run.deployment_id == deployment_id
    assert flow_run.state is not None and flow_run.state.is_completed(), flow_run.state
    assert flow_run.parameters["models"] == ["pop", "ease"]

    versions = registry.list_versions(create_engine(os.environ["RECSYS_DATABASE_URL"]))
    assert sorted(v.family for v in versions) == ["ease", "pop"]
    assert {v.flow_run_id for v in versions} == {str(flow_run.id)}
    assert any(registry.CHAMPION in v.aliases for v in versions)
    report = Path(flow_home["RECSYS_HOME"]) / "reports" / f"retrain-{flow_run.id}.md"
    assert "PROMOTED" in report.read_text()


def test_schedule_apply_only_returns_the_registered_deployment(
    flow_home: dict[str, str],
) -> None:
    printed = schedule(
        apply_only=True,
        name="test-apply",
        cron="30 4 * * 1",
        models=["ease"],
        split="temporal",
        margin=0.01,
    )
    assert printed["name"] == "retrain/test-apply" and printed["schedule"] == "30 4 * * 1"
    stored = read_deployment(UUID(printed["deployment_id"]))
    assert stored.name == "test-apply" and stored.schedules[0].schedule.cron == "30 4 * * 1"
    assert stored.parameters == {
        "models": ["ease"],
        "split": "temporal",
        "margin": 0.01,
        "force": False,
    }


def test_schedule_serves_the_deployment_unless_apply_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served: list[RunnerDeployment] = []
    monkeypatch.setattr(deploy_module, "serve", lambda *d: served.extend(d))
    schedule(cron="0 5 * * *", models=["pop", "ease"])
    deployment, monitor, retune = served
    # The weekly re-tune: the retrain's models that have a search space (not popularity).
    assert retune.name == "weekly" and retune.concurrency_limit == 1
    assert retune.parameters == {
        "models": ["ease"],
        "trials": 30,
        "budget_seconds": 3600.0,
        "split": "loo",
    }
    assert retune.schedules is not None
    assert isinstance(retune.schedules[0].schedule, CronSchedule)
    assert retune.schedules[0].schedule.cron == "0 1 * * 0"
    assert monitor.name == "drift" and monitor.concurrency_limit == 1
    assert monitor.parameters == {"retrain_deployment": "retrain/nightly"}
    assert monitor.schedules is not None
    assert isinstance(monitor.schedules[0].schedule, CronSchedule)
    assert monitor.schedules[0].schedule.cron == "*/15 * * * *"
    assert deployment.name == "nightly" and deployment.parameters["models"] == ["pop", "ease"]
    assert deployment.concurrency_limit == 1
    assert deployment.schedules is not None
    cron = deployment.schedules[0].schedule
    assert isinstance(cron, CronSchedule) and cron.cron == "0 5 * * *"


def test_schedule_apply_only_registers_the_re_tune(flow_home: dict[str, str]) -> None:
    printed = schedule(
        apply_only=True, name="test-tune", models=["pop", "ease"], tune_cron="0 2 * * 6"
    )
    tuning = printed["tune"]
    assert tuning["name"] == "tune/weekly" and tuning["schedule"] == "0 2 * * 6"
    stored = read_deployment(UUID(tuning["deployment_id"]))
    assert stored.entrypoint == "flows.tune.tune_flow"
    assert stored.parameters["models"] == ["ease"]
    assert {"recsys", "tune"} <= set(stored.tags)
    assert stored.global_concurrency_limit is not None
    assert stored.global_concurrency_limit.limit == 1
    with pytest.raises(RecsysError, match="pop has nothing to tune"):
        tune_deployment(models=["pop"])


def test_retrain_deployment_rejects_unknown_models_and_splits() -> None:
    with pytest.raises(RecsysError, match="unknown model 'nope'"):
        retrain_deployment(models=["ease", "nope"])
    with pytest.raises(RecsysError, match="unknown split"):
        retrain_deployment(split="random")


@pytest.mark.slow
def test_recsys_schedule_registers_then_serves_the_deployment(flow_home: dict[str, str]) -> None:
    import subprocess
    import sys
    import time

    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, **flow_home, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    recsys = str(Path(sys.executable).with_name("recsys"))
    applied = subprocess.run(
        [recsys, "schedule", "--cron", "30 2 * * *", "--models", "ease", "--apply-only"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert applied.returncode == 0, applied.stderr
    registered = json.loads(applied.stdout.strip().splitlines()[-1])
    assert registered["schedule"] == "30 2 * * *"
    deployment = read_deployment(UUID(registered["deployment_id"]))
    assert deployment.parameters["models"] == ["ease"]

    # Without --apply-only the command stays up and serves the deployment's runs.
    serving = subprocess.Popen(
        [recsys, "schedule", "--cron", "45 1 * * *", "--models", "ease"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert serving.poll() is None, serving.stderr.read() if serving.stderr else ""
            current = read_deployment(UUID(registered["deployment_id"]))
            crons = [s.schedule.cron for s in current.schedules]
            if crons == ["45 1 * * *"]:
                break
            assert time.monotonic() < deadline, f"the served deployment still has {crons}"
            time.sleep(0.5)
    finally:
        serving.terminate()
        serving.wait(timeout=30)


@pytest.fixture
def sources_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The shop on SQLite as RECSYS_SOURCES_FILE."""
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    shop = sa.create_engine(url)
    fill(shop)
    shop.dispose()
    path = write_sources(tmp_path / "recsys.toml", url)
    monkeypatch.setenv("RECSYS_SOURCES_FILE", str(path))
    return path


@pytest.mark.slow
def test_sync_deployment_registers_its_cron_limit_and_parameters_and_runs_a_sync(
    flow_home: dict[str, str], sources_file: Path
) -> None:
    deployment = sync_deployment(name="test-sync", cron="*/5 * * * *")
    deployment_id = deployment.apply()
    stored = read_deployment(deployment_id)
    assert stored.name == "test-sync" and stored.entrypoint == "flows.sync.sync_flow"
    (schedule,) = stored.schedules
    assert isinstance(schedule.schedule, CronSchedule) and schedule.active
    assert schedule.schedule.cron == "*/5 * * * *" and schedule.schedule.timezone == "UTC"
    assert stored.global_concurrency_limit is not None
    assert stored.global_concurrency_limit.limit == 1
    assert stored.concurrency_options is not None
    assert stored.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW
    assert stored.parameters == {"names": None}
    assert "purchases, views, products, customers" in stored.description

    flow_run = asyncio.run(trigger_and_serve_once(deployment))
    assert flow_run.deployment_id == deployment_id
    assert flow_run.state is not None and flow_run.state.is_completed(), flow_run.state
    engine = create_engine(os.environ["RECSYS_DATABASE_URL"])
    with engine.connect() as conn:
        marks = dict(conn.execute(sa.text("SELECT name, value FROM source_watermarks")).all())
    engine.dispose()
    assert marks["purchases"] == "8" and set(marks) == {"purchases", "views"}


def test_schedule_serves_the_sync_beside_the_retrain_when_there_are_sources(
    monkeypatch: pytest.MonkeyPatch, sources_file: Path
) -> None:
    served: list[RunnerDeployment] = []
    monkeypatch.setattr(deploy_module, "serve", lambda *d: served.extend(d))
    result = schedule(cron="0 5 * * *", models=["ease"])
    retrain, sync, _monitor, _retune = served
    assert result["sync"] == "sync-sources/frequent"
    assert retrain.name == "nightly" and sync.name == "frequent"
    assert sync.concurrency_limit == 1 and sync.parameters == {"names": None}
    assert sync.schedules is not None
    cron = sync.schedules[0].schedule
    assert isinstance(cron, CronSchedule) and cron.cron == "*/5 * * * *"

    served.clear()
    schedule(cron="0 5 * * *", models=["ease"], sync_cron="0 * * * *", sync_sources=["views"])
    assert served[1].parameters == {"names": ["views"]}
    assert served[1].schedules is not None and served[1].schedules[0].schedule.cron == "0 * * * *"
    served.clear()
    assert schedule(cron="0 5 * * *", models=["ease"], sync_cron="off")["sync"] is None
    assert [d.name for d in served] == ["nightly", "drift", "weekly"]
    with pytest.raises(SourceConfigError, match="no source named 'clicks'"):
        schedule(models=["ease"], sync_sources=["clicks"])


def test_schedule_leaves_the_sync_out_without_a_sources_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RECSYS_SOURCES_FILE", str(tmp_path / "none.toml"))
    served: list[RunnerDeployment] = []
    monkeypatch.setattr(deploy_module, "serve", lambda *d: served.extend(d))
    assert schedule(models=["ease"])["sync"] is None
    assert [d.name for d in served] == ["nightly", "drift", "weekly"]
    with pytest.raises(SourceConfigError, match="no sources file at"):
        schedule(models=["ease"], sync_cron="*/5 * * * *")  # asked for: the file must exist


def test_schedule_apply_only_registers_the_sync_too(
    flow_home: dict[str, str], sources_file: Path
) -> None:
    printed = schedule(apply_only=True, name="test-both", models=["ease"], sync_name="test-s")
    sync = printed["sync"]
    assert sync["name"] == "sync-sources/test-s" and sync["schedule"] == "*/5 * * * *"
    assert sync["concurrency_limit"] == 1 and sync["parameters"] == {"names": None}
    stored = read_deployment(UUID(sync["deployment_id"]))
    assert stored.schedules[0].schedule.cron == "*/5 * * * *"


@pytest.mark.slow
def test_recsys_schedule_sync_cron_option(flow_home: dict[str, str], sources_file: Path) -> None:
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    recsys = str(Path(sys.executable).with_name("recsys"))
    applied = subprocess.run(
        [
            *(recsys, "schedule", "--models", "ease", "--sync-cron", "*/10 * * * *"),
            *("--monitor-cron", "*/30 * * * *", "--apply-only"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert applied.returncode == 0, applied.stderr
    registered = json.loads(applied.stdout.strip().splitlines()[-1])
    assert registered["sync"]["schedule"] == "*/10 * * * *"
    stored = read_deployment(UUID(registered["sync"]["deployment_id"]))
    assert stored.entrypoint == "flows.sync.sync_flow"
    assert registered["monitor"]["schedule"] == "*/30 * * * *"
    stored = read_deployment(UUID(registered["monitor"]["deployment_id"]))
    assert stored.entrypoint == "flows.monitor.monitor_flow"


def test_schedule_serves_the_drift_monitor_on_its_cron_or_not_at_all(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RECSYS_SOURCES_FILE", str(tmp_path / "none.toml"))
    served: list[RunnerDeployment] = []
    monkeypatch.setattr(deploy_module, "serve", lambda *d: served.extend(d))
    result = schedule(name="weekly", models=["ease"], monitor_cron="*/5 * * * *", tune_cron="off")
    assert result["monitor"] == "drift-monitor/drift" and result["tune"] is None
    _, monitor = served
    assert monitor.parameters == {"retrain_deployment": "retrain/weekly"}
    assert monitor.schedules is not None
    cron = monitor.schedules[0].schedule
    assert isinstance(cron, CronSchedule) and cron.cron == "*/5 * * * *"
    served.clear()
    for off in ("off", "OFF", "", None):
        assert schedule(models=["ease"], monitor_cron=off, tune_cron=off)["monitor"] is None
    assert [d.name for d in served] == ["nightly"] * 4


def test_schedule_apply_only_registers_the_monitor_with_its_limit(
    flow_home: dict[str, str],
) -> None:
    printed = schedule(apply_only=True, name="test-mon", models=["ease"], sync_cron="off")
    monitor = printed["monitor"]
    assert monitor["name"] == "drift-monitor/drift" and monitor["schedule"] == "*/15 * * * *"
    assert monitor["parameters"] == {"retrain_deployment": "retrain/test-mon"}
    stored = read_deployment(UUID(monitor["deployment_id"]))
    assert stored.global_concurrency_limit is not None
    assert stored.global_concurrency_limit.limit == 1
    assert {"recsys", "drift"} <= set(stored.tags)
