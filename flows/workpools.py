"""Deployments on work pools: ``recsys deploy`` (``python -m flows deploy '{...}'``).

The retrain, sources sync, drift monitor, re-tune and batch deployments (the builders of
:mod:`flows.deploy`: each its cron, a concurrency limit of 1 that cancels a colliding run, its
parameters) are registered on a named work pool, and the workers of that pool run them
(``prefect worker start --pool NAME``): in a process beside the worker (a ``process`` pool,
the default), a container (``docker``) or a Kubernetes Job (``kubernetes``). The retrain
can go to a pool or a queue of its own, one with GPUs for example, with job variables of its
own, and so does the re-tune, which trains too; the rest stays on the main pool. Entrypoints
are module paths (``flows.retrain.retrain_flow``), so a worker whose Python environment has
recsys installed runs them from any directory: nothing is pulled and no image is built here.

A flow run killed with its worker (a container evicted, a machine lost) stays Running in
Prefect until something says otherwise. Each flow run sends a heartbeat event every
``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds; the automation created here marks a run of
ours (tag ``recsys``) Crashed when ``crash_after_seconds`` pass without one, and the job
variables make the runs beat at a third of that. The next retrain then frees the dead run's
database lock (:func:`flows.common.free_lock_of_ended_run`) and runs.

Job variables are stored in Prefect's database: secrets never go there (refused here). Give
them to the worker's environment (a process pool's runs inherit it) or, for containers and
Kubernetes Jobs, from a Kubernetes Secret in the pool's base job template.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import StateType
from prefect.deployments.runner import RunnerDeployment
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.exceptions import ObjectNotFound
from prefect.settings import get_current_settings

from flows.deploy import (
    CONCURRENCY,
    DEFAULT_BATCH_CRON,
    DEFAULT_BATCH_NAME,
    DEFAULT_CRON,
    DEFAULT_MONITOR_CRON,
    DEFAULT_MONITOR_NAME,
    DEFAULT_NAME,
    DEFAULT_SYNC_NAME,
    DEFAULT_TIMEZONE,
    DEFAULT_TUNE_CRON,
    DEFAULT_TUNE_NAME,
    batch_deployment,
    is_off,
    monitor_deployment,
    retrain_deployment,
    sync_cron_for,
    sync_deployment,
    tune_deployment,
)
from recsys.config import DEFAULT_MODELS
from recsys.errors import RecsysError
from recsys.models import spec

DEFAULT_POOL = "recsys"
DEFAULT_POOL_TYPE = "process"
POOL_TYPES = ("process", "docker", "kubernetes")
CRASH_AUTOMATION = "recsys: crash flow runs whose heartbeats stopped"
DEFAULT_CRASH_AFTER_SECONDS = 540  # Prefect Cloud's default: three heartbeats of 180 s
MIN_HEARTBEAT_SECONDS = 30  # Prefect's floor for PREFECT_FLOWS_HEARTBEAT_FREQUENCY
HEARTBEAT_VARIABLE = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
RUN_TAG = "recsys"  # every deployment here carries it, and so do their runs
SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|API_KEY|PRIVATE_KEY)", re.IGNORECASE)
URL_WITH_PASSWORD = re.compile(r"://[^/@:\s]*:[^/@\s]+@")


def deploy(
    *,
    pool: str = DEFAULT_POOL,
    pool_type: str = DEFAULT_POOL_TYPE,
    queue: str | None = None,
    train_pool: str | None = None,
    train_queue: str | None = None,
    image: str | None = None,
    job_variables: dict[str, Any] | None = None,
    train_job_variables: dict[str, Any] | None = None,
    name: str = DEFAULT_NAME,
    cron: str = DEFAULT_CRON,
    timezone: str = DEFAULT_TIMEZONE,
    models: list[str] | None = None,
    split: str = "loo",
    margin: float = 0.0,
    nproc: int = 1,
    sync_cron: str | None = None,
    sync_name: str = DEFAULT_SYNC_NAME,
    sync_sources: list[str] | None = None,
    monitor_cron: str | None = DEFAULT_MONITOR_CRON,
    monitor_name: str = DEFAULT_MONITOR_NAME,
    batch_cron: str | None = DEFAULT_BATCH_CRON,
    batch_name: str = DEFAULT_BATCH_NAME,
    k: int = 10,
    tune_cron: str | None = DEFAULT_TUNE_CRON,
    tune_name: str = DEFAULT_TUNE_NAME,
    crash_after_seconds: int | None = DEFAULT_CRASH_AFTER_SECONDS,
) -> dict[str, Any]:
    """Register the deployments on ``pool`` (created as a ``pool_type`` pool when missing),
    the retrain and the re-tune (both train) on ``train_pool``/``train_queue`` when given,
    and the crash automation
    (``crash_after_seconds`` None or 0: none). Returns what was registered."""
    if get_current_settings().api.url is None:
        raise RecsysError(
            "recsys deploy needs a Prefect server that outlives it: set PREFECT_API_URL "
            "(`prefect server start` serves one at http://127.0.0.1:4200/api)"
        )
    if pool_type not in POOL_TYPES:
        raise RecsysError(f"unknown pool type {pool_type!r}; choose from: {', '.join(POOL_TYPES)}")
    if crash_after_seconds and crash_after_seconds < 2 * MIN_HEARTBEAT_SECONDS:
        raise RecsysError(
            f"crash_after_seconds must be at least {2 * MIN_HEARTBEAT_SECONDS} "
            f"(flow runs beat every {MIN_HEARTBEAT_SECONDS} s at the most), or 0 for none"
        )
    beat = heartbeat_seconds(crash_after_seconds)
    common = run_variables(job_variables, image, beat)
    training = run_variables(merged(job_variables, train_job_variables), image, beat)
    pools = {pool: ensure_pool(pool, pool_type)}
    if train_pool and train_pool not in pools:
        pools[train_pool] = ensure_pool(train_pool, pool_type)
    pools[pool].check(common, "the deployments")
    pools[train_pool or pool].check(training, "the retrain")

    def on(target: str, target_queue: str | None, variables: dict[str, Any]) -> dict[str, Any]:
        return {
            "work_pool_name": target,
            "work_queue_name": target_queue,
            "job_variables": variables,
        }

    deployments: list[tuple[RunnerDeployment, str]] = [
        (
            retrain_deployment(
                name=name,
                cron=cron,
                models=models,
                split=split,
                margin=margin,
                timezone=timezone,
                nproc=nproc,
                **on(train_pool or pool, train_queue or queue, training),
            ),
            cron,
        )
    ]
    chosen_sync = sync_cron_for(sync_cron)
    if chosen_sync is not None:
        deployments.append(
            (
                sync_deployment(
                    name=sync_name,
                    cron=chosen_sync,
                    names=sync_sources,
                    timezone=timezone,
                    **on(pool, queue, common),
                ),
                chosen_sync,
            )
        )
    if not is_off(monitor_cron):
        assert monitor_cron is not None
        deployments.append(
            (
                monitor_deployment(
                    name=monitor_name,
                    cron=monitor_cron,
                    retrain=name,
                    timezone=timezone,
                    **on(pool, queue, common),
                ),
                monitor_cron,
            )
        )
    if not is_off(batch_cron):
        assert batch_cron is not None
        deployments.append(
            (
                batch_deployment(
                    name=batch_name,
                    cron=batch_cron,
                    k=k,
                    timezone=timezone,
                    **on(pool, queue, common),
                ),
                batch_cron,
            )
        )
    if not is_off(tune_cron):
        assert tune_cron is not None
        tunable = [m for m in (models or DEFAULT_MODELS) if spec(m).search_space]
        deployments.append(
            (
                tune_deployment(
                    name=tune_name,
                    cron=tune_cron,
                    models=tunable or None,
                    split=split,
                    timezone=timezone,
                    **on(train_pool or pool, train_queue or queue, training),
                ),
                tune_cron,
            )
        )
    registered = [describe(d, chosen_cron) for d, chosen_cron in deployments]
    automation = None
    if crash_after_seconds:
        automation = {
            "id": str(ensure_crash_automation(crash_after_seconds)),
            "name": CRASH_AUTOMATION,
            "crash_after_seconds": crash_after_seconds,
            "heartbeat_seconds": beat,
        }
    return {
        "pools": [found.to_dict() for found in pools.values()],
        "deployments": registered,
        "crash_automation": automation,
        "next": worker_commands(pool, queue, train_pool, train_queue),
    }


def worker_commands(
    pool: str, queue: str | None, train_pool: str | None, train_queue: str | None
) -> list[str]:
    """The workers these deployments need: one per pool, or per queue where the retrain has a
    queue of its own in the main pool (so the main pool's worker leaves it alone)."""

    def start(target: str, target_queue: str | None) -> str:
        command = f"prefect worker start --pool {target}"
        return command + (f" --work-queue {target_queue}" if target_queue else "")

    if train_pool and train_pool != pool:
        return [start(pool, queue), start(train_pool, train_queue or queue)]
    if train_queue and train_queue != (queue or "default"):
        return [start(pool, queue or "default"), start(pool, train_queue)]
    return [start(pool, queue)]


def heartbeat_seconds(crash_after_seconds: int | None) -> int | None:
    """How often runs beat so that ``crash_after_seconds`` without one is three missed."""
    if not crash_after_seconds:
        return None
    return max(MIN_HEARTBEAT_SECONDS, crash_after_seconds // 3)


def merged(base: dict[str, Any] | None, over: dict[str, Any] | None) -> dict[str, Any]:
    """``over`` on ``base``; their ``env`` entries merge (``over``'s win)."""
    chosen = {**(base or {}), **(over or {})}
    env = {**((base or {}).get("env") or {}), **((over or {}).get("env") or {})}
    if env:
        chosen["env"] = env
    return chosen


def run_variables(
    variables: dict[str, Any] | None, image: str | None, beat: int | None
) -> dict[str, Any]:
    """The job variables of a deployment: ``variables``, the image, the heartbeat; no secrets."""
    chosen = dict(variables or {})
    env = dict(chosen.get("env") or {})
    refuse_secrets(env)
    if beat is not None:
        env.setdefault(HEARTBEAT_VARIABLE, str(beat))
    if env:
        chosen["env"] = env
    if image:
        chosen["image"] = image
    return chosen


def refuse_secrets(env: dict[str, Any]) -> None:
    """Job variables live in Prefect's database, in plain text: no passwords or tokens there."""
    for key, value in env.items():
        if SECRET_NAME.search(key) or URL_WITH_PASSWORD.search(str(value)):
            raise RecsysError(
                f"job variable env {key} looks like a secret, and job variables are stored in "
                "Prefect's database: give it to the worker's environment or a Kubernetes Secret"
            )


@dataclass(frozen=True)
class Pool:
    name: str
    type: str
    created: bool
    variables: frozenset[str]  # the job variables its base job template takes

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "created": self.created}

    def check(self, variables: dict[str, Any], deployment: str) -> None:
        """Refuse job variables this pool's job template does not take (``image`` on a
        process pool, a misspelt ``memory_limt``): they would be ignored silently."""
        unknown = sorted(set(variables) - self.variables)
        if unknown:
            raise RecsysError(
                f"{deployment}: {self.type} work pool {self.name!r} takes no job variable "
                f"{', '.join(unknown)}; it takes {', '.join(sorted(self.variables))}"
            )


def ensure_pool(name: str, pool_type: str) -> Pool:
    """The pool ``name``; created as a ``pool_type`` pool with its default job template (as
    ``prefect work-pool create NAME --type TYPE`` would) when there is none."""
    from prefect.workers.utilities import get_default_base_job_template_for_infrastructure_type

    with get_client(sync_client=True) as client:
        try:
            existing = client.read_work_pool(name)
            return Pool(name, existing.type, False, template_variables(existing.base_job_template))
        except ObjectNotFound:
            pass
        template = asyncio.run(get_default_base_job_template_for_infrastructure_type(pool_type))
        if template is None:
            raise RecsysError(f"no job template for {pool_type!r} work pools")
        client.create_work_pool(
            WorkPoolCreate(
                name=name,
                type=pool_type,
                base_job_template=template,
                description="recsys flows (recsys deploy)",
            )
        )
    return Pool(name, pool_type, True, template_variables(template))


def template_variables(template: dict[str, Any]) -> frozenset[str]:
    return frozenset((template.get("variables") or {}).get("properties") or {})


def describe(deployment: RunnerDeployment, cron: str) -> dict[str, Any]:
    """Register ``deployment`` and say what it is."""
    deployment_id = deployment.apply()
    return {
        "deployment_id": str(deployment_id),
        "name": f"{deployment.flow_name}/{deployment.name}",
        "work_pool": deployment.work_pool_name,
        "work_queue": deployment.work_queue_name,
        "schedule": cron,
        "concurrency_limit": CONCURRENCY.limit,
        "parameters": deployment.parameters,
        "job_variables": deployment.job_variables,
    }


def crash_automation(crash_after_seconds: int) -> AutomationCore:
    """After a heartbeat of a recsys flow run, expect another event of that run (a heartbeat or
    a state change) within ``crash_after_seconds``; else mark the run Crashed."""
    return AutomationCore(
        name=CRASH_AUTOMATION,
        description=(
            "Marks a recsys flow run Crashed when its heartbeats stop (its worker or machine "
            "died), so its concurrency slot and database lock are freed for the next run."
        ),
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.*"},
            match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
            match_related=ResourceSpecification(
                {"prefect.resource.id": f"prefect.tag.{RUN_TAG}", "prefect.resource.role": "tag"}
            ),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=crash_after_seconds),
        ),
        actions=[
            ChangeFlowRunState(
                name=None,
                force=False,  # a run that ended meanwhile keeps its own final state
                state=StateType.CRASHED,
                message=f"no heartbeat for {crash_after_seconds} s: its worker or machine died",
            )
        ],
    )


def ensure_crash_automation(crash_after_seconds: int) -> Any:
    """The crash automation, replacing any earlier one of the same name; its id."""
    with get_client(sync_client=True) as client:
        for earlier in client.read_automations_by_name(CRASH_AUTOMATION):
            client.delete_automation(earlier.id)
        return client.create_automation(crash_automation(crash_after_seconds))
