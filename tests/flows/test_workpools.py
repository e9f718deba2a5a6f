"""``recsys deploy``: the deployments on work pools, on a temporary Prefect server (what was
registered), and a real worker running them (tests/flows/test_workers.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect import get_client
from prefect.client.schemas.objects import ConcurrencyLimitStrategy
from prefect.client.schemas.schedules import CronSchedule
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.workpools import (
    CRASH_AUTOMATION,
    deploy,
    heartbeat_seconds,
    merged,
    worker_commands,
)
from recsys.errors import RecsysError


def stored(deployment_id: str) -> Any:
    with get_client(sync_client=True) as client:
        return client.read_deployment(UUID(deployment_id))


def pool_of(name: str) -> Any:
    with get_client(sync_client=True) as client:
        return client.read_work_pool(name)


def test_deploy_puts_the_five_deployments_on_a_new_process_pool_and_training_on_its_queue(
    flow_home: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSYS_SOURCES_FILE", str(tmp_path / "none.toml"))  # no sync
    result = deploy(
        pool="wp-main",
        train_queue="training",
        name="wp-nightly",
        cron="15 2 * * *",
        models=["pop", "ease"],
        nproc=2,
        monitor_name="wp-drift",
        batch_name="wp-daily",
        batch_cron="45 4 * * *",
        k=20,
        job_variables={"env": {"RECSYS_THREADS": "4"}},
        crash_after_seconds=600,
    )
    assert result["pools"] == [{"name": "wp-main", "type": "process", "created": True}]
    assert pool_of("wp-main").type == "process"
    by_name = {row["name"]: row for row in result["deployments"]}
    assert set(by_name) == {
        "retrain/wp-nightly",
        "drift-monitor/wp-drift",
        "batch-recommend/wp-daily",
        "tune/weekly",
    }

    retrain = stored(by_name["retrain/wp-nightly"]["deployment_id"])
    assert retrain.work_pool_name == "wp-main" and retrain.work_queue_name == "training"
    assert retrain.entrypoint == "flows.retrain.retrain_flow"  # imported, nothing pulled
    assert retrain.pull_steps in (None, [])
    (schedule,) = retrain.schedules
    assert isinstance(schedule.schedule, CronSchedule) and schedule.schedule.cron == "15 2 * * *"
    assert retrain.global_concurrency_limit is not None
    assert retrain.global_concurrency_limit.limit == 1
    assert retrain.concurrency_options is not None
    assert retrain.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW
    assert retrain.parameters == {
        "models": ["pop", "ease"],
        "split": "loo",
        "margin": 0.0,
        "force": False,
        "nproc": 2,
    }
    # Runs beat at a third of the crash delay; the worker's own variables are kept.
    env = {"RECSYS_THREADS": "4", "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "200"}
    assert retrain.job_variables == {"env": env}

    # The re-tune trains too: on the retrain's queue, with its variables.
    retune = stored(by_name["tune/weekly"]["deployment_id"])
    assert retune.entrypoint == "flows.tune.tune_flow"
    assert retune.work_pool_name == "wp-main" and retune.work_queue_name == "training"
    assert retune.parameters["models"] == ["ease"] and retune.job_variables == {"env": env}

    monitor = stored(by_name["drift-monitor/wp-drift"]["deployment_id"])
    assert monitor.work_pool_name == "wp-main" and monitor.work_queue_name == "default"
    assert monitor.parameters == {"retrain_deployment": "retrain/wp-nightly"}
    batch = stored(by_name["batch-recommend/wp-daily"]["deployment_id"])
    assert batch.entrypoint == "flows.batch.batch_recommend_flow"
    assert batch.parameters == {"k": 20} and batch.schedules[0].schedule.cron == "45 4 * * *"
    assert batch.global_concurrency_limit is not None
    assert batch.global_concurrency_limit.limit == 1

    # Only the training queue's worker takes the retrain; the other takes the rest.
    assert result["next"] == [
        "prefect worker start --pool wp-main --work-queue default",
        "prefect worker start --pool wp-main --work-queue training",
    ]
    with get_client(sync_client=True) as client:
        (automation,) = client.read_automations_by_name(CRASH_AUTOMATION)
    assert automation.trigger.within == timedelta(seconds=600)
    assert automation.trigger.after == {"prefect.flow-run.heartbeat"}
    assert result["crash_automation"]["heartbeat_seconds"] == 200

    again = deploy(pool="wp-main", models=["ease"], name="wp-nightly", crash_after_seconds=90)
    assert again["pools"][0]["created"] is False
    with get_client(sync_client=True) as client:
        (automation,) = client.read_automations_by_name(CRASH_AUTOMATION)  # replaced, not added
    assert automation.trigger.within == timedelta(seconds=90)


def test_deploy_routes_the_retrain_to_a_kubernetes_pool_with_its_resources_and_image(
    flow_home: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSYS_SOURCES_FILE", str(tmp_path / "none.toml"))
    result = deploy(
        pool="wp-k8s",
        pool_type="kubernetes",
        train_pool="wp-k8s-gpu",
        image="registry.example/recsys:1.0",
        job_variables={"namespace": "recsys", "env": {"RECSYS_THREADS": "2"}},
        train_job_variables={"cpu_request": "4", "memory_limit": "16Gi"},
        name="wp-k8s-nightly",
        models=["ease"],
        monitor_cron="off",
        batch_name="wp-k8s-daily",
        crash_after_seconds=0,
    )
    assert [p["type"] for p in result["pools"]] == ["kubernetes", "kubernetes"]
    assert result["crash_automation"] is None
    by_name = {row["name"]: row for row in result["deployments"]}
    retrain = stored(by_name["retrain/wp-k8s-nightly"]["deployment_id"])
    assert retrain.work_pool_name == "wp-k8s-gpu"
    assert retrain.job_variables == {
        "namespace": "recsys",
        "env": {"RECSYS_THREADS": "2"},
        "cpu_request": "4",
        "memory_limit": "16Gi",
        "image": "registry.example/recsys:1.0",
    }
    batch = stored(by_name["batch-recommend/wp-k8s-daily"]["deployment_id"])
    assert batch.work_pool_name == "wp-k8s"
    assert batch.job_variables == {
        "namespace": "recsys",
        "env": {"RECSYS_THREADS": "2"},
        "image": "registry.example/recsys:1.0",
    }
    assert result["next"] == [
        "prefect worker start --pool wp-k8s",
        "prefect worker start --pool wp-k8s-gpu",
    ]


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"env": {"RECSYS_ADMIN_TOKEN": "x"}}, "RECSYS_ADMIN_TOKEN looks like a secret"),
        (
            {"env": {"RECSYS_DATABASE_URL": "postgresql://recsys:hunter2@db/recsys"}},
            "RECSYS_DATABASE_URL looks like a secret",
        ),
        ({"image": "recsys:1"}, "process work pool 'wp-refuse' takes no job variable image"),
    ],
)
def test_deploy_refuses_secrets_and_job_variables_the_pool_does_not_take(
    flow_home: dict[str, str], variables: dict[str, Any], message: str
) -> None:
    with pytest.raises(RecsysError, match=message):
        deploy(pool="wp-refuse", models=["ease"], job_variables=variables, sync_cron="off")


def test_deploy_needs_a_prefect_server_and_known_options(flow_home: dict[str, str]) -> None:
    with (
        temporary_settings({PREFECT_API_URL: None}),
        pytest.raises(RecsysError, match="PREFECT_API_URL"),
    ):
        deploy(models=["ease"])
    with pytest.raises(RecsysError, match="unknown pool type 'ecs'"):
        deploy(pool_type="ecs", models=["ease"])
    for too_soon in (45, -1):
        with pytest.raises(RecsysError, match="crash_after_seconds must be at least 60"):
            deploy(models=["ease"], crash_after_seconds=too_soon)
    with pytest.raises(RecsysError, match="unknown model 'nope'"):
        deploy(models=["nope"], sync_cron="off")


def test_retrain_variables_go_over_the_others_and_their_env_merges() -> None:
    base = {"env": {"A": "1", "B": "1"}, "namespace": "recsys"}
    over = {"env": {"B": "2"}, "memory_limit": "8Gi"}
    assert merged(base, over) == {
        "env": {"A": "1", "B": "2"},
        "namespace": "recsys",
        "memory_limit": "8Gi",
    }
    assert merged(None, None) == {}


def test_heartbeat_and_worker_commands() -> None:
    assert heartbeat_seconds(None) is None and heartbeat_seconds(0) is None
    assert heartbeat_seconds(60) == 30 and heartbeat_seconds(540) == 180
    assert worker_commands("p", None, None, None) == ["prefect worker start --pool p"]
    assert worker_commands("p", "q", None, "q") == ["prefect worker start --pool p --work-queue q"]
    assert worker_commands("p", None, "gpu", "big") == [
        "prefect worker start --pool p",
        "prefect worker start --pool gpu --work-queue big",
    ]


@pytest.mark.slow
def test_recsys_deploy_prints_the_deployments_and_the_workers_to_start(
    flow_home: dict[str, str], tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "RECSYS_SOURCES_FILE": str(tmp_path / "none.toml"),
    }
    recsys = str(Path(sys.executable).with_name("recsys"))
    command = [recsys, "deploy", "--pool", "wp-cli", "--models", "ease", "--batch-cron", "off"]
    done = subprocess.run(
        [*command, "--train-job-variables", '{"env": {"RECSYS_THREADS": "8"}}', "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert [row["name"] for row in result["deployments"]] == [
        "retrain/nightly",
        "drift-monitor/drift",
        "tune/weekly",
    ]
    assert result["deployments"][2]["job_variables"]["env"]["RECSYS_THREADS"] == "8"
    assert result["deployments"][0]["job_variables"]["env"]["RECSYS_THREADS"] == "8"
    assert "RECSYS_THREADS" not in result["deployments"][1]["job_variables"]["env"]

    text = subprocess.run(
        [*command, "--job-variables", "[1]"], capture_output=True, text=True, env=env, timeout=60
    )
    assert text.returncode == 1
    assert (
        text.stderr.strip()
        == "error: --job-variables must be a JSON object, like '{\"env\": {...}}'"
    )
