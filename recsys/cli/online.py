"""``recsys online report``: what the served recommendations did, per version and arm;
``recsys online drift``: how far the recent traffic has moved from the champion's training."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from recsys.cli.output import JsonOption, current_engine, emit, user_errors
from recsys.config import get_settings

online_app = typer.Typer(
    help="Online metrics of the served lists: impressions, clicks, conversions.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(online_app, name="online")


@online_app.command("report")
@user_errors
def report(
    since: Annotated[str, typer.Option(help="Start: an age (24h, 7d) or an ISO time.")] = "7d",
    until: Annotated[str | None, typer.Option(help="End (default: now).")] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="Rank cut-off.", min=1, max=1000)] = 10,
    as_json: JsonOption = False,
) -> None:
    """Attribute events to impressions over the range, then print the online metrics."""
    from recsys.online.attribution import attribute
    from recsys.online.metrics import online_metrics
    from recsys.online.times import moment_ms

    settings = get_settings()
    engine = current_engine()
    start = moment_ms(since)
    end = None if until is None else moment_ms(until)
    attribute(
        engine,
        window_seconds=settings.attribution_window_seconds,
        since_ms=start,
        until_ms=end,
    )
    groups = online_metrics(
        engine,
        click_events=settings.click_events.split(","),
        conversion_events=settings.conversion_events.split(","),
        since_ms=start,
        until_ms=end,
        k=k,
    )
    data: dict[str, Any] = {
        "since_ms": start,
        "until_ms": end,
        "k": k,
        "click_events": settings.click_events.split(","),
        "conversion_events": settings.conversion_events.split(","),
        "groups": [g.report() for g in groups],
    }

    def table() -> None:
        if not groups:
            typer.echo("no impressions in this range")
            return
        typer.echo(
            f"{'version':>7} {'arm':<10} {'shown':>8}  {'ctr@' + str(k):<24} "
            f"{'conversion@' + str(k):<24} {'mrr':<24} {'coverage':<24} fallback"
        )
        for g in groups:
            typer.echo(
                f"{'v' + str(g.model_version):>7} {g.arm or '-':<10} {g.impressions:>8}  "
                f"{_ci(g.ctr.report()):<24} {_ci(g.conversion.report()):<24} "
                f"{_ci(g.mrr.report()):<24} {_ci(g.coverage.report()):<24} "
                f"{_ci(g.fallback_share.report())}"
            )

    emit(data, as_json, table)


@online_app.command("drift")
@user_errors
def drift(
    flow: Annotated[
        bool,
        typer.Option(
            "--flow",
            help="Run the drift monitor flow instead: it publishes the report and starts the "
            "retrain deployment when a signal trips (once per cool-down).",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Attribute the recent events, then print the drift signals of the champion."""
    if flow:
        from recsys.cli.runner import run_flow

        emit(run_flow("monitor", {}), True)
        return
    from recsys.online.attribution import attribute
    from recsys.online.drift import Thresholds, drift_signals, windows
    from recsys.online.impressions import now_ms

    settings = get_settings()
    engine = current_engine()
    now = now_ms()
    _, baseline_since = windows(now, settings.drift_window_seconds, settings.drift_baseline_seconds)
    attribute(
        engine,
        window_seconds=settings.attribution_window_seconds,
        since_ms=baseline_since,
        until_ms=now,
    )
    found = drift_signals(
        engine,
        window_seconds=settings.drift_window_seconds,
        baseline_seconds=settings.drift_baseline_seconds,
        thresholds=Thresholds.from_settings(settings),
        click_events=settings.click_events.split(","),
        conversion_events=settings.conversion_events.split(","),
        now_ms=now,
    )

    def table() -> None:
        typer.echo(
            f"champion v{found.champion}, the last {settings.drift_window_seconds:g} s "
            f"against its training (snapshot {found.snapshot_at or 'unknown'})"
        )
        for s in found.signals:
            value = "-" if s.value is None else f"{s.value:.4f}"
            mark = "TRIPPED" if s.tripped else "ok"
            typer.echo(f"  {s.name:<24} {value:>8} > {s.threshold:<6g} {mark:<8} {s.detail}")

    emit(found.report(), as_json, table)


def _ci(estimate: dict[str, Any]) -> str:
    if estimate["value"] is None:
        return "-"
    if estimate["ci_low"] is None:
        return f"{estimate['value']:.4f}"
    return f"{estimate['value']:.4f} [{estimate['ci_low']:.4f}, {estimate['ci_high']:.4f}]"
