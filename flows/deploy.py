"""The scheduled retrain: a Prefect deployment of ``retrain_flow`` on a cron, one run at a time.

``python -m flows.deploy`` creates it and serves its runs; ``--apply-only`` just registers it.
"""

from __future__ import annotations

import argparse
import json
import sys

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron
from prefect.settings import get_current_settings
from prefect.types.entrypoint import EntrypointType

from flows.common import start_prefect_api
from flows.retrain import retrain_flow
from recsys.errors import RecsysError
from recsys.models import spec
from recsys.retrain import DEFAULT_MODELS

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Create the scheduled retrain deployment and serve its runs."
    )
    parser.add_argument("--name", default=DEFAULT_NAME)
    parser.add_argument("--cron", default=DEFAULT_CRON)
    parser.add_argument("--timezone", default=DEFAULT_TIMEZONE)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--split", default="loo", choices=SPLITS)
    parser.add_argument("--margin", type=float, default=0.0)
    parser.add_argument(
        "--apply-only", action="store_true", help="register the deployment and exit"
    )
    args = parser.parse_args(argv)
    deployment = retrain_deployment(
        name=args.name,
        cron=args.cron,
        models=[m.strip() for m in args.models.split(",") if m.strip()],
        split=args.split,
        margin=args.margin,
        timezone=args.timezone,
    )
    start_prefect_api()  # a temporary server when PREFECT_API_URL is unset, one at a time
    if not args.apply_only:
        serve(deployment)  # registers it, then runs its scheduled runs until interrupted
        return
    if get_current_settings().api.url is None:
        print(
            "warning: PREFECT_API_URL is not set, so the deployment goes to a temporary server"
            " that stops with this command",
            file=sys.stderr,
        )
    deployment_id = deployment.apply()
    result = {
        "deployment_id": str(deployment_id),
        "name": f"{retrain_flow.name}/{deployment.name}",
        "schedule": args.cron,
        "timezone": args.timezone,
        "concurrency_limit": CONCURRENCY.limit,
        "parameters": deployment.parameters,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
