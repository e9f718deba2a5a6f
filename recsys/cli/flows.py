"""``recsys retrain``, ``batch`` and ``schedule`` (retrain, sources sync, drift monitor): the
Prefect flows, run in a child process
(see :mod:`recsys.cli.runner`); ``recsys sources sync --flow`` is in :mod:`recsys.cli.sources`."""

from __future__ import annotations

from typing import Annotated

import typer

from recsys.cli.output import JsonOption, emit, user_errors
from recsys.cli.runner import exec_flow, run_flow
from recsys.config import DEFAULT_MODELS

DEFAULT_MODELS_TEXT = ",".join(DEFAULT_MODELS)
ModelsOption = Annotated[str, typer.Option(help="Comma-separated model families.")]


def register(app: typer.Typer) -> None:
    app.command("retrain")(retrain)
    app.command("batch")(batch)
    app.command("schedule")(schedule)


def model_list(text: str) -> list[str]:
    """Comma-separated families, each checked against the model registry."""
    from recsys.models import spec

    names = [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        spec(name)
    return names


@user_errors
def retrain(
    models: ModelsOption = DEFAULT_MODELS_TEXT,
    split_name: Annotated[str, typer.Option("--split", help="loo or temporal.")] = "loo",
    margin: Annotated[float, typer.Option(help="Gain the candidate must show (CI low).")] = 0.0,
    force: Annotated[bool, typer.Option("--force", help="Retrain even if no new data.")] = False,
    build_bento: Annotated[
        bool, typer.Option("--build-bento", help="Build a bento on promotion.")
    ] = False,
    budget_seconds: Annotated[
        float | None, typer.Option(help="Training time budget per model.")
    ] = None,
    window_days: Annotated[
        float | None,
        typer.Option(
            help="Train on the last N days of events only. Default: RECSYS_TRAIN_WINDOW_DAYS.",
        ),
    ] = None,
    nproc: Annotated[
        int,
        typer.Option(help="Processes that train each learned candidate together.", min=1, max=64),
    ] = 1,
    refit: Annotated[
        bool | None,
        typer.Option(
            "--refit/--no-refit",
            help="Train a promoted candidate again on every event (held-out ones included) "
            "and serve that. Default: RECSYS_REFIT.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Run the Prefect retrain flow once and print its decision."""
    result = run_flow(
        "retrain",
        {
            "models": model_list(models),
            "split": split_name,
            "margin": margin,
            "force": force,
            "build_bento": build_bento,
            "budget_seconds": budget_seconds,
            "window_days": window_days,
            "nproc": nproc,
            "refit": refit,
        },
    )
    if as_json:
        emit(result, True)
        return
    typer.echo(f"retrain {result['status']}: {result['reason']}")
    for row in result.get("candidates", []):
        typer.echo(
            f"  v{row['version']} {row['model']:<8} {row['status']:<10} "
            f"ndcg@10 {row.get('ndcg@10', float('nan')):.4f} {row.get('ndcg@10 ci', '')}"
        )
    if result.get("report_path"):
        typer.echo(f"report: {result['report_path']}")


@user_errors
def batch(
    k: Annotated[int, typer.Option("-k", "--k", help="Items per user.", min=1, max=1000)] = 10,
    as_json: JsonOption = False,
) -> None:
    """Run the batch flow: the champion's top-k for every user into `recommendations`."""
    emit(run_flow("batch", {"k": k}), as_json)


@user_errors
def schedule(
    cron: Annotated[str, typer.Option(help="Cron schedule of the retrain (UTC).")] = "0 3 * * *",
    models: ModelsOption = DEFAULT_MODELS_TEXT,
    sync_cron: Annotated[
        str | None,
        typer.Option(
            help="Cron schedule of the sources sync (UTC); 'off' for none. "
            "Default: */5 * * * * when RECSYS_SOURCES_FILE exists, else off."
        ),
    ] = None,
    monitor_cron: Annotated[
        str,
        typer.Option(
            help="Cron schedule of the drift monitor (UTC), which starts the retrain when "
            "the traffic drifts; 'off' for none."
        ),
    ] = "*/15 * * * *",
    tune_cron: Annotated[
        str,
        typer.Option(
            help="Cron schedule of the re-tune of the models with a search space (UTC); "
            "'off' for none."
        ),
    ] = "0 1 * * 0",
    apply_only: Annotated[
        bool, typer.Option("--apply-only", help="Register the deployments and exit.")
    ] = False,
) -> None:
    """Create the scheduled retrain deployment, the sources sync deployment, the drift
    monitor deployment and the re-tune deployment and, unless --apply-only, serve their runs."""
    parameters = {
        "cron": cron,
        "models": model_list(models),
        "sync_cron": sync_cron,
        "monitor_cron": monitor_cron,
        "tune_cron": tune_cron,
        "apply_only": apply_only,
    }
    if apply_only:
        emit(run_flow("schedule", parameters), True)
        return
    exec_flow("schedule", parameters)
