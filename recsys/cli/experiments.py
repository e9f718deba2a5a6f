"""``recsys experiments start|status|stop``: a challenger version against the champion."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from recsys.cli.output import JsonOption, current_engine, emit, user_errors, version_number
from recsys.config import Settings, get_settings

experiments_app = typer.Typer(
    help="Champion-versus-challenger experiments on live traffic.", no_args_is_help=True
)
ReasonOption = Annotated[str, typer.Option(help="Why (recorded with the experiment).")]


def register(app: typer.Typer) -> None:
    app.add_typer(experiments_app, name="experiments")


@experiments_app.command("start")
@user_errors
def start(
    challenger: Annotated[str, typer.Option(help="Version to try on a share of the users.")],
    share: Annotated[
        float, typer.Option(help="Share of users (0-1) the challenger answers.")
    ] = 0.1,
    reason: ReasonOption = "manual experiment",
    as_json: JsonOption = False,
) -> None:
    """Send ``--share`` of the users (a stable hash of their id) to ``--challenger``."""
    from recsys import registry
    from recsys.online.experiments import start_experiment

    engine = current_engine()
    experiment = start_experiment(
        engine,
        version_number(engine, challenger),
        share,
        actor=registry.actor("recsys experiments start"),
        reason=reason,
    )
    data = experiment.report()
    emit(
        data,
        as_json,
        lambda: typer.echo(
            f"experiment #{experiment.id} running: v{experiment.challenger_version} answers "
            f"{experiment.share:.0%} of users, v{experiment.champion_version} the rest "
            "(services follow within RECSYS_POLL_SECONDS)"
        ),
    )


@experiments_app.command("status")
@user_errors
def status(
    experiment_id: Annotated[
        int | None, typer.Option("--id", help="An experiment (default: the running or latest).")
    ] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="Rank cut-off.", min=1, max=1000)] = 10,
    as_json: JsonOption = False,
) -> None:
    """Each arm's online metrics and the challenger's difference, interval and p-value."""
    from recsys.online.experiments import get_experiment

    engine = current_engine()
    experiment = get_experiment(engine, experiment_id)
    if experiment.results is not None and experiment.status != "running":
        data: dict[str, Any] = {"experiment": experiment.report(), **experiment.results}
    else:
        data = _status(engine, experiment, get_settings(), k).report()
    emit(data, as_json, lambda: _print_status(data))


@experiments_app.command("stop")
@user_errors
def stop(
    promote: Annotated[
        bool | None,
        typer.Option(
            "--promote/--keep", help="Make the challenger champion, or keep the champion."
        ),
    ] = None,
    reason: ReasonOption = "experiment ended",
    k: Annotated[int, typer.Option("-k", "--k", help="Rank cut-off.", min=1, max=1000)] = 10,
    as_json: JsonOption = False,
) -> None:
    """End the running experiment, recording the decision with the numbers behind it."""
    from recsys import registry
    from recsys.errors import RecsysError
    from recsys.online.experiments import get_experiment
    from recsys.online.outcomes import stop_experiment

    if promote is None:
        raise RecsysError("say --promote (the challenger becomes champion) or --keep")
    engine = current_engine()
    experiment = get_experiment(engine)
    numbers = _status(engine, experiment, get_settings(), k)
    stopped = stop_experiment(
        engine,
        "promote" if promote else "keep",
        actor=registry.actor("recsys experiments stop"),
        reason=reason,
        status=numbers,
    )
    data = {"experiment": stopped.report(), **(stopped.results or {})}
    emit(data, as_json, lambda: _print_status(data))


def _status(engine: Any, experiment: Any, settings: Settings, k: int) -> Any:
    from recsys.online.outcomes import experiment_status

    return experiment_status(
        engine,
        experiment,
        click_events=settings.click_events.split(","),
        conversion_events=settings.conversion_events.split(","),
        window_seconds=settings.attribution_window_seconds,
        k=k,
    )


def _print_status(data: dict[str, Any]) -> None:
    e = data["experiment"]
    decided = f", decision: {e['decision']} ({e['decision_reason']})" if e.get("decision") else ""
    typer.echo(
        f"experiment #{e['id']} {e['status']}: v{e['challenger_version']} on "
        f"{e['share']:.0%} against v{e['champion_version']}{decided}"
    )
    for arm, metrics in data.get("arms", {}).items():
        ctr = next(v for key, v in metrics.items() if key.startswith("ctr@"))
        typer.echo(
            f"  {arm:<10} v{metrics['model_version']}: {metrics['impressions']} impressions, "
            f"ctr {_fmt(ctr)}"
        )
    for diff in data.get("differences", []):
        if diff["diff"] is None:
            typer.echo(f"  {diff['metric']}: not enough impressions in both arms yet")
            continue
        typer.echo(
            f"  {diff['metric']}: challenger - champion = {diff['diff']:+.4f} "
            f"[{diff['ci_low']:+.4f}, {diff['ci_high']:+.4f}], p = {diff['p_value']:.4g}"
        )


def _fmt(estimate: dict[str, Any]) -> str:
    if estimate["value"] is None:
        return "-"
    if estimate["ci_low"] is None:
        return f"{estimate['value']:.4f}"
    return f"{estimate['value']:.4f} [{estimate['ci_low']:.4f}, {estimate['ci_high']:.4f}]"
