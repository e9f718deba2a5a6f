"""``recsys tune``: an Optuna study of one model family on the current data
(:mod:`recsys.tuning`), in this process or (``--flow``) as the Prefect tune flow; the best
trial becomes the family's tuned settings, which the next retrain trains with."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from recsys.cli.output import JsonOption, emit, engine_of, user_errors
from recsys.cli.runner import run_flow
from recsys.config import get_settings
from recsys.errors import RecsysError


def register(app: typer.Typer) -> None:
    app.command("tune")(tune)


@user_errors
def tune(
    model: Annotated[str, typer.Option("--model", help="The model family to tune.")],
    trials: Annotated[
        int, typer.Option(help="Finished trials the study should have (all runs).", min=1)
    ] = 30,
    budget_seconds: Annotated[
        float | None, typer.Option(help="Wall-clock budget of this run (the study's timeout).")
    ] = None,
    split_name: Annotated[str, typer.Option("--split", help="loo or temporal.")] = "loo",
    max_epochs: Annotated[
        int | None, typer.Option(help="Epochs at most per trial. Default: the model's.", min=1)
    ] = None,
    window_days: Annotated[
        float | None,
        typer.Option(help="Tune on the last N days of events. Default: RECSYS_TRAIN_WINDOW_DAYS."),
    ] = None,
    as_flow: Annotated[
        bool, typer.Option("--flow", help="Run it as the Prefect tune flow (report artifacts).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Tune a model on validation NDCG@10 (TPE, median pruning); record its best settings.

    Trials are kept in the database: run it again (or on another machine) to resume the
    study. Test metrics are never computed.
    """
    from recsys.data.splits import PROTOCOLS
    from recsys.models import spec

    if split_name not in PROTOCOLS:
        raise RecsysError(f"unknown split {split_name!r}; choose from: {', '.join(PROTOCOLS)}")
    if not spec(model).search_space:
        raise RecsysError(f"{model} has nothing to tune (no SEARCH_SPACE in its model file)")
    if as_flow:
        result = run_flow(
            "tune",
            {
                "models": [model],
                "trials": trials,
                "budget_seconds": budget_seconds,
                "split": split_name,
                "window_days": window_days,
                "max_epochs": max_epochs,
            },
        )
        _emit(result["tuned"][0], as_json)
        return
    _emit(_in_process(model, trials, budget_seconds, split_name, max_epochs, window_days), as_json)


def _in_process(
    model: str,
    trials: int,
    budget_seconds: float | None,
    protocol: Any,
    max_epochs: int | None,
    window_days: float | None,
) -> dict[str, Any]:
    from recsys.db.migrate import require_current
    from recsys.tune_report import write_report
    from recsys.tuning import tune_and_record

    settings = get_settings()
    engine = engine_of(settings)
    try:
        require_current(engine)
        overrides: dict[str, Any] = {} if max_epochs is None else {"max_epochs": max_epochs}
        window = settings.train_window_days if window_days is None else window_days
        result, tuned = tune_and_record(
            engine,
            model,
            protocol,
            trials=trials,
            budget_seconds=budget_seconds,
            train_overrides=overrides,
            window_days=window,
        )
    finally:
        engine.dispose()
    report, plot, _ = write_report(result, tuned, home=settings.home)
    return {
        **tuned.to_dict(),
        "importances": result.importances,
        "ran": result.ran,
        "report": str(report),
        "plot": str(plot),
    }


def _emit(result: dict[str, Any], as_json: bool) -> None:
    def table() -> None:
        typer.echo(
            f"{result['family']}: best valid {result['metric']} {result['best_valid']:.4f} "
            f"at trial #{result['best_trial']} of {result['trials']} ({result['pruned']} "
            f"pruned, {result['ran']} in this run); study {result['study_name']}"
        )
        for key, value in sorted(result["params"].items()):
            typer.echo(f"  {key} = {value}")
        typer.echo(f"recorded as tuned settings #{result['id']}; report: {result['report']}")

    emit(result, as_json, table)
