"""The scheduled flows: a Prefect deployment of ``retrain_flow`` on a cron and, beside it, one
of ``sync_flow`` on its own cron when there are database sources, one of the drift monitor
(``monitor_flow``, which starts that retrain deployment when the traffic drifts) on another,
one of the re-tune (``tune_flow``, weekly) and one of the batch (``batch_recommend_flow``);
each one run at a time.

``recsys schedule`` (``python -m flows schedule '{...}'``) creates all but the batch and
serves their runs from one process; ``apply_only`` just registers them. ``recsys deploy``
(:mod:`flows.workpools`) puts all five on work pools, whose workers run them; the builders
here take the pool, queue and job variables for that (none: served by ``schedule``).
"""

from __future__ import annotations

import sys
from typing import Any

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron
from prefect.settings import get_current_settings
from prefect.types.entrypoint import EntrypointType

from flows.batch import batch_recommend_flow
from flows.common import start_prefect_api
from flows.monitor import monitor_flow
from flows.retrain import retrain_flow
from flows.sync import chosen_sources, sync_flow
from flows.tune import DEFAULT_BUDGET_SECONDS, DEFAULT_TRIALS, TUNE_MODELS, tune_flow
from recsys.config import DEFAULT_MODELS, get_settings
from recsys.errors import RecsysError
from recsys.models import spec

DEFAULT_NAME = "nightly"
DEFAULT_CRON = "0 3 * * *"
DEFAULT_TIMEZONE = "UTC"
SPLITS = ("loo", "temporal")
TAGS = ["recsys", "retrain", "scheduled"]
DEFAULT_SYNC_NAME = "frequent"
DEFAULT_SYNC_CRON = "*/5 * * * *"
SYNC_OFF = "off"
SYNC_TAGS = ["recsys", "sources", "scheduled"]
DEFAULT_MONITOR_NAME = "drift"
DEFAULT_MONITOR_CRON = "*/15 * * * *"
MONITOR_TAGS = ["recsys", "drift", "scheduled"]
DEFAULT_BATCH_NAME = "daily"
DEFAULT_BATCH_CRON = "0 4 * * *"  # an hour after the nightly retrain
BATCH_TAGS = ["recsys", "batch", "scheduled"]
DEFAULT_TUNE_NAME = "weekly"
DEFAULT_TUNE_CRON = "0 1 * * 0"  # Sunday night, two hours before that day's retrain
TUNE_TAGS = ["recsys", "tune", "scheduled"]
# At most one run of each deployment at a time; a run due while one is active (or a backlog
# of runs missed while nothing was serving) is cancelled rather than queued behind it.
CONCURRENCY = ConcurrencyLimitConfig(
    limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
)


def retrain_deployment(
    *,
    name: str = DEFAULT_NAME,
    cron: str = DEFAULT_CRON,
    models: list[str] | None = None,
    split: str = "loo",
    margin: float = 0.0,
    timezone: str = DEFAULT_TIMEZONE,
    nproc: int = 1,
    work_pool_name: str | None = None,
    work_queue_name: str | None = None,
    job_variables: dict[str, Any] | None = None,
) -> RunnerDeployment:
    """The retrain deployment: ``models`` (default: the retrain defaults) on ``cron``, each
    learned one trained in ``nproc`` processes; on a work pool (and queue, with job
    variables) when ``work_pool_name`` is given."""
    chosen = list(models or DEFAULT_MODELS)
    for model in chosen:
        spec(model)  # unknown names fail here, not at 3 a.m.
    if split not in SPLITS:
        raise RecsysError(f"unknown split {split!r}; choose from: {', '.join(SPLITS)}")
    if not 1 <= nproc <= 64:
        raise RecsysError(f"nproc must be between 1 and 64, not {nproc}")
    parameters: dict[str, Any] = {"models": chosen, "split": split, "margin": margin}
    parameters["force"] = False
    if nproc > 1:
        parameters["nproc"] = nproc
    deployment = retrain_flow.to_deployment(
        name=name,
        schedule=Cron(cron, timezone=timezone),
        concurrency_limit=CONCURRENCY,
        parameters=parameters,
        description=(
            f"Retrain {', '.join(chosen)} on the current data ({split} split) and promote "
            f"the best if it beats the champion by {margin}; skipped when the data is unchanged."
        ),
        tags=TAGS,
        entrypoint_type=EntrypointType.MODULE_PATH,  # importable from any directory
        work_pool_name=work_pool_name,
        work_queue_name=work_queue_name,
        job_variables=job_variables,
    )
    if not isinstance(deployment, RunnerDeployment):  # Prefect hands back a coroutine in a loop
        deployment.close()
        raise RecsysError("retrain_deployment is synchronous: call it outside an event loop")
    return deployment


def sync_deployment(
    *,
    name: str = DEFAULT_SYNC_NAME,
    cron: str = DEFAULT_SYNC_CRON,
    names: list[str] | None = None,
    timezone: str = DEFAULT_TIMEZONE,
    work_pool_name: str | None = None,
    work_queue_name: str | None = None,
    job_variables: dict[str, Any] | None = None,
) -> RunnerDeployment:
    """The sync deployment: the sources ``names`` (default: all) on ``cron``."""
    sources = chosen_sources(get_settings().sources_file, names)  # a bad file fails now
    deployment = sync_flow.to_deployment(
        name=name,
        schedule=Cron(cron, timezone=timezone),
        concurrency_limit=CONCURRENCY,
        parameters={"names": names or None},
        description=(
            f"Read the new rows of {', '.join(s.name for s in sources)} into the store; "
            "a source another sync is reading is skipped."
        ),
        tags=SYNC_TAGS,
        entrypoint_type=EntrypointType.MODULE_PATH,
        work_pool_name=work_pool_name,
        work_queue_name=work_queue_name,
        job_variables=job_variables,
    )
    if not isinstance(deployment, RunnerDeployment):
        deployment.close()
        raise RecsysError("sync_deployment is synchronous: call it outside an event loop")
    return deployment


def monitor_deployment(
    *,
    name: str = DEFAULT_MONITOR_NAME,
    cron: str = DEFAULT_MONITOR_CRON,
    retrain: str = DEFAULT_NAME,
    timezone: str = DEFAULT_TIMEZONE,
    work_pool_name: str | None = None,
    work_queue_name: str | None = None,
    job_variables: dict[str, Any] | None = None,
) -> RunnerDeployment:
    """The drift monitor on ``cron``, starting the retrain deployment named ``retrain``."""
    target = f"{retrain_flow.name}/{retrain}"
    deployment = monitor_flow.to_deployment(
        name=name,
        schedule=Cron(cron, timezone=timezone),
        concurrency_limit=CONCURRENCY,
        parameters={"retrain_deployment": target},
        description=(
            "Compare the recent traffic with the champion's training data and start "
            f"{target} when a drift signal trips, at most once per cool-down."
        ),
        tags=MONITOR_TAGS,
        entrypoint_type=EntrypointType.MODULE_PATH,
        work_pool_name=work_pool_name,
        work_queue_name=work_queue_name,
        job_variables=job_variables,
    )
    if not isinstance(deployment, RunnerDeployment):
        deployment.close()
        raise RecsysError("monitor_deployment is synchronous: call it outside an event loop")
    return deployment


def batch_deployment(
    *,
    name: str = DEFAULT_BATCH_NAME,
    cron: str = DEFAULT_BATCH_CRON,
    k: int = 10,
    timezone: str = DEFAULT_TIMEZONE,
    work_pool_name: str | None = None,
    work_queue_name: str | None = None,
    job_variables: dict[str, Any] | None = None,
) -> RunnerDeployment:
    """The batch on ``cron``: the champion's top-``k`` for every user into ``recommendations``."""
    if not 1 <= k <= 1000:
        raise RecsysError(f"k must be between 1 and 1000, not {k}")
    deployment = batch_recommend_flow.to_deployment(
        name=name,
        schedule=Cron(cron, timezone=timezone),
        concurrency_limit=CONCURRENCY,
        parameters={"k": k},
        description=(
            f"Replace the stored recommendations with the champion's top-{k} for every user."
        ),
        tags=BATCH_TAGS,
        entrypoint_type=EntrypointType.MODULE_PATH,
        work_pool_name=work_pool_name,
        work_queue_name=work_queue_name,
        job_variables=job_variables,
    )
    if not isinstance(deployment, RunnerDeployment):
        deployment.close()
        raise RecsysError("batch_deployment is synchronous: call it outside an event loop")
    return deployment


def tune_deployment(
    *,
    name: str = DEFAULT_TUNE_NAME,
    cron: str = DEFAULT_TUNE_CRON,
    models: list[str] | None = None,
    trials: int = DEFAULT_TRIALS,
    budget_seconds: float = DEFAULT_BUDGET_SECONDS,
    split: str = "loo",
    timezone: str = DEFAULT_TIMEZONE,
    work_pool_name: str | None = None,
    work_queue_name: str | None = None,
    job_variables: dict[str, Any] | None = None,
) -> RunnerDeployment:
    """The re-tune on ``cron``: each of ``models`` (default: the retrain's families with a
    search space) for ``trials`` trials or ``budget_seconds``; the retrains after it train
    with what it found."""
    chosen = list(models or TUNE_MODELS)
    for model in chosen:
        if not spec(model).search_space:
            raise RecsysError(f"{model} has nothing to tune (no SEARCH_SPACE in its model file)")
    if split not in SPLITS:
        raise RecsysError(f"unknown split {split!r}; choose from: {', '.join(SPLITS)}")
    if trials < 1 or budget_seconds <= 0:
        raise RecsysError("a re-tune needs at least one trial and a positive budget")
    deployment = tune_flow.to_deployment(
        name=name,
        schedule=Cron(cron, timezone=timezone),
        concurrency_limit=CONCURRENCY,
        parameters={
            "models": chosen,
            "trials": trials,
            "budget_seconds": budget_seconds,
            "split": split,
        },
        description=(
            f"Tune {', '.join(chosen)} on the current data ({split} split, {trials} trials or "
            f"{budget_seconds:g} s each); the next retrains train with the best settings."
        ),
        tags=TUNE_TAGS,
        entrypoint_type=EntrypointType.MODULE_PATH,
        work_pool_name=work_pool_name,
        work_queue_name=work_queue_name,
        job_variables=job_variables,
    )
    if not isinstance(deployment, RunnerDeployment):
        deployment.close()
        raise RecsysError("tune_deployment is synchronous: call it outside an event loop")
    return deployment


def is_off(cron: str | None) -> bool:
    """``None``, empty or ``"off"``: no deployment on that cron."""
    return cron is None or cron.strip().lower() in ("", SYNC_OFF)


def sync_cron_for(sync_cron: str | None) -> str | None:
    """The sync's cron: ``None`` means every 5 minutes if the sources file exists, else off;
    ``"off"`` (or empty) is off; any other value is the cron (and the file must exist)."""
    if sync_cron is None:
        return DEFAULT_SYNC_CRON if get_settings().sources_file.exists() else None
    if sync_cron.strip().lower() in ("", SYNC_OFF):
        return None
    return sync_cron


def schedule(
    *,
    name: str = DEFAULT_NAME,
    cron: str = DEFAULT_CRON,
    timezone: str = DEFAULT_TIMEZONE,
    models: list[str] | None = None,
    split: str = "loo",
    margin: float = 0.0,
    sync_cron: str | None = None,
    sync_name: str = DEFAULT_SYNC_NAME,
    sync_sources: list[str] | None = None,
    monitor_cron: str | None = DEFAULT_MONITOR_CRON,
    monitor_name: str = DEFAULT_MONITOR_NAME,
    tune_cron: str | None = DEFAULT_TUNE_CRON,
    tune_name: str = DEFAULT_TUNE_NAME,
    apply_only: bool = False,
) -> dict[str, Any]:
    """Create the retrain deployment, on ``sync_cron`` (see :func:`sync_cron_for`) the sync
    deployment and on ``monitor_cron`` (``"off"`` or None: none) the drift monitor, and serve
    their runs until interrupted; with ``apply_only``, register them and return what was
    registered (``recsys schedule``)."""
    deployment = retrain_deployment(
        name=name, cron=cron, models=models, split=split, margin=margin, timezone=timezone
    )
    chosen_cron = sync_cron_for(sync_cron)
    sync = None
    if chosen_cron is not None:
        sync = sync_deployment(
            name=sync_name, cron=chosen_cron, names=sync_sources, timezone=timezone
        )
    watch = None
    if monitor_cron is not None and not is_off(monitor_cron):
        watch = monitor_deployment(
            name=monitor_name, cron=monitor_cron, retrain=name, timezone=timezone
        )
    retune = None
    if not is_off(tune_cron):
        assert tune_cron is not None
        tunable = [m for m in (models or DEFAULT_MODELS) if spec(m).search_space]
        retune = tune_deployment(
            name=tune_name, cron=tune_cron, models=tunable or None, split=split, timezone=timezone
        )
    start_prefect_api()  # a temporary server when PREFECT_API_URL is unset, one at a time
    if not apply_only:
        others = [d for d in (sync, watch, retune) if d is not None]
        serve(deployment, *others)  # registers, then runs until interrupted
        return {
            "name": f"{retrain_flow.name}/{deployment.name}",
            "sync": None if sync is None else f"{sync_flow.name}/{sync.name}",
            "monitor": None if watch is None else f"{monitor_flow.name}/{watch.name}",
            "tune": None if retune is None else f"{tune_flow.name}/{retune.name}",
            "served": True,
        }
    if get_current_settings().api.url is None:
        print(
            "warning: PREFECT_API_URL is not set, so the deployment goes to a temporary server"
            " that stops with this command",
            file=sys.stderr,
        )
    deployment_id = deployment.apply()
    registered = None
    if sync is not None:
        registered = {
            "deployment_id": str(sync.apply()),
            "name": f"{sync_flow.name}/{sync.name}",
            "schedule": chosen_cron,
            "concurrency_limit": CONCURRENCY.limit,
            "parameters": sync.parameters,
        }
    monitor = None
    if watch is not None:
        monitor = {
            "deployment_id": str(watch.apply()),
            "name": f"{monitor_flow.name}/{watch.name}",
            "schedule": monitor_cron,
            "concurrency_limit": CONCURRENCY.limit,
            "parameters": watch.parameters,
        }
    tuning = None
    if retune is not None:
        tuning = {
            "deployment_id": str(retune.apply()),
            "name": f"{tune_flow.name}/{retune.name}",
            "schedule": tune_cron,
            "concurrency_limit": CONCURRENCY.limit,
            "parameters": retune.parameters,
        }
    return {
        "deployment_id": str(deployment_id),
        "name": f"{retrain_flow.name}/{deployment.name}",
        "schedule": cron,
        "timezone": timezone,
        "concurrency_limit": CONCURRENCY.limit,
        "parameters": deployment.parameters,
        "sync": registered,
        "monitor": monitor,
        "tune": tuning,
    }
