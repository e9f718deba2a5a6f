"""``recsys deploy``: the retrain, sources sync, drift monitor, re-tune and batch deployments
on a Prefect work pool, run by that pool's workers (the flow entry point is
:mod:`flows.workpools`, run in a child process by :mod:`recsys.cli.runner`).
``recsys schedule`` (:mod:`.flows`) serves the same flows from its own process instead."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from recsys.cli.flows import DEFAULT_MODELS_TEXT, ModelsOption, model_list
from recsys.cli.output import JsonOption, emit, user_errors
from recsys.cli.runner import run_flow
from recsys.errors import RecsysError

OFF_HELP = "'off' for none."


def register(app: typer.Typer) -> None:
    app.command("deploy")(deploy)


def json_object(text: str | None, option: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecsysError(f"{option} must be a JSON object: {exc.msg}") from None
    if not isinstance(value, dict):
        raise RecsysError(f"{option} must be a JSON object, like '{{\"env\": {{...}}}}'")
    return value


@user_errors
def deploy(
    pool: Annotated[str, typer.Option(help="Work pool of the deployments.")] = "recsys",
    pool_type: Annotated[
        str,
        typer.Option(help="Type of the pool when it must be created: process, docker, kubernetes."),
    ] = "process",
    queue: Annotated[
        str | None, typer.Option(help="Work queue in the pool. Default: the pool's default queue.")
    ] = None,
    train_pool: Annotated[
        str | None,
        typer.Option(help="Work pool of the retrain (one with GPUs, say). Default: --pool."),
    ] = None,
    train_queue: Annotated[
        str | None, typer.Option(help="Work queue of the retrain. Default: --queue.")
    ] = None,
    image: Annotated[
        str | None, typer.Option(help="Image of docker and kubernetes pools' runs.")
    ] = None,
    job_variables: Annotated[
        str | None,
        typer.Option(help="Job variables of every deployment, a JSON object: '{\"env\": {...}}'."),
    ] = None,
    train_job_variables: Annotated[
        str | None,
        typer.Option(help="Job variables of the retrain, over --job-variables (resources, GPUs)."),
    ] = None,
    cron: Annotated[str, typer.Option(help="Cron schedule of the retrain (UTC).")] = "0 3 * * *",
    models: ModelsOption = DEFAULT_MODELS_TEXT,
    nproc: Annotated[
        int, typer.Option(help="Processes that train each learned candidate.", min=1, max=64)
    ] = 1,
    sync_cron: Annotated[
        str | None,
        typer.Option(
            help="Cron schedule of the sources sync; 'off' for none. "
            "Default: */5 * * * * when RECSYS_SOURCES_FILE exists, else off."
        ),
    ] = None,
    monitor_cron: Annotated[
        str, typer.Option(help=f"Cron schedule of the drift monitor; {OFF_HELP}")
    ] = "*/15 * * * *",
    batch_cron: Annotated[
        str, typer.Option(help=f"Cron schedule of the batch recommendations; {OFF_HELP}")
    ] = "0 4 * * *",
    k: Annotated[int, typer.Option("-k", "--k", help="Items per user in the batch.", min=1)] = 10,
    tune_cron: Annotated[
        str, typer.Option(help=f"Cron schedule of the re-tune (on the retrain's pool); {OFF_HELP}")
    ] = "0 1 * * 0",
    crash_after: Annotated[
        int,
        typer.Option(
            help="Seconds without a heartbeat after which a run is marked Crashed; 0: never."
        ),
    ] = 540,
    as_json: JsonOption = False,
) -> None:
    """Register the scheduled deployments on a work pool (created when missing); its workers
    (`prefect worker start --pool NAME`) run them. Needs PREFECT_API_URL."""
    parameters = {
        "pool": pool,
        "pool_type": pool_type,
        "queue": queue,
        "train_pool": train_pool,
        "train_queue": train_queue,
        "image": image,
        "job_variables": json_object(job_variables, "--job-variables"),
        "train_job_variables": json_object(train_job_variables, "--train-job-variables"),
        "cron": cron,
        "models": model_list(models),
        "nproc": nproc,
        "sync_cron": sync_cron,
        "monitor_cron": monitor_cron,
        "batch_cron": batch_cron,
        "k": k,
        "tune_cron": tune_cron,
        "crash_after_seconds": crash_after,
    }
    result = run_flow("deploy", parameters)
    if as_json:
        emit(result, True)
        return
    for found in result["pools"]:
        state = "created" if found["created"] else "exists"
        typer.echo(f"work pool {found['name']} ({found['type']}, {state})")
    for row in result["deployments"]:
        where = row["work_pool"] + (f"/{row['work_queue']}" if row["work_queue"] else "")
        typer.echo(f"  {row['name']:<28} {row['schedule']:<14} on {where}")
    automation = result.get("crash_automation")
    if automation:
        typer.echo(
            f"runs without a heartbeat for {automation['crash_after_seconds']} s are marked Crashed"
        )
    typer.echo("start the workers: " + "; ".join(result["next"]))
