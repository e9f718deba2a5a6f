"""The scheduled retrain: a Prefect deployment of ``retrain_flow`` on a cron, one run at a time.

``recsys schedule`` (``python -m flows schedule '{...}'``) creates it and serves its runs;
``apply_only`` just registers it.
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

from flows.common import start_prefect_api
from flows.retrain import retrain_flow
from recsys.config import DEFAULT_MODELS
from recsys.errors import RecsysError
from recsys.models import spec

DEFAULT_NAME = "nightly"
DEFAULT_CRON = "0 3 * * *"
DEFAULT_TIMEZONE = "UTC"
SPLITS = ("loo", "temporal")
TAGS = ["recsys", "retrain", "scheduled"]
# At most one retrain at a time; a run due while one is active (or a backlog of runs missed
# while nothing was serving) is cancelled rather than queued behind it.
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
) -> RunnerDeployment:
    """The retrain deployment: ``models`` (default: the retrain defaults) on ``cron``."""
    chosen = list(models or DEFAULT_MODELS)
    for model in chosen:
        spec(model)  # unknown names fail here, not at 3 a.m.
    if split not in SPLITS:
        raise RecsysError(f"unknown split {split!r}; choose from: {', '.join(SPLITS)}")
    deployment = retrain_flow.to_deployment(
        name=name,
        schedule=Cron(cron, timezone=timezone),
        concurrency_limit=CONCURRENCY,
        parameters={"models": chosen, "split": split, "margin": margin, "force": False},
        description=(
            f"Retrain {', '.join(chosen)} on the current data ({split} split) and promote "
            f"the best if it beats the champion by {margin}; skipped when the data is unchanged."
        ),
        tags=TAGS,
        entrypoint_type=EntrypointType.MODULE_PATH,  # importable from any directory
    )
    if not isinstance(deployment, RunnerDeployment):  # Prefect hands back a coroutine in a loop
        deployment.close()
        raise RecsysError("retrain_deployment is synchronous: call it outside an event loop")
    return deployment


def schedule(
    *,
    name: str = DEFAULT_NAME,
    cron: str = DEFAULT_CRON,
    timezone: str = DEFAULT_TIMEZONE,
    models: list[str] | None = None,
    split: str = "loo",
    margin: float = 0.0,
    apply_only: bool = False,
) -> dict[str, Any]:
    """Create the retrain deployment and serve its runs until interrupted; with
    ``apply_only``, register it and return what was registered (``recsys schedule``)."""
    deployment = retrain_deployment(
        name=name, cron=cron, models=models, split=split, margin=margin, timezone=timezone
    )
    start_prefect_api()  # a temporary server when PREFECT_API_URL is unset, one at a time
    if not apply_only:
        serve(deployment)  # registers it, then runs its scheduled runs until interrupted
        return {"name": f"{retrain_flow.name}/{deployment.name}", "served": True}
    if get_current_settings().api.url is None:
        print(
            "warning: PREFECT_API_URL is not set, so the deployment goes to a temporary server"
            " that stops with this command",
            file=sys.stderr,
        )
    deployment_id = deployment.apply()
    return {
        "deployment_id": str(deployment_id),
        "name": f"{retrain_flow.name}/{deployment.name}",
        "schedule": cron,
        "timezone": timezone,
        "concurrency_limit": CONCURRENCY.limit,
        "parameters": deployment.parameters,
    }
