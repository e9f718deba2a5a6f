"""``recsys train``, ``evaluate`` and ``recsys models``: training a model and the registry's
versions and aliases (``recommend`` is in :mod:`recsys.cli.recommend`)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from recsys.cli.output import (
    JsonOption,
    current_engine,
    emit,
    engine_of,
    fmt,
    print_mapping,
    user_errors,
    version_number,
    version_ref,
)
from recsys.cli.recommend import recommend
from recsys.config import get_settings
from recsys.errors import RecsysError

models_app = typer.Typer(help="The model registry: versions and aliases.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("train")(train_model)
    app.command("evaluate")(evaluate_version)
    app.command("recommend")(recommend)
    app.add_typer(models_app, name="models")


@user_errors
def train_model(
    model: Annotated[str, typer.Option("--model", help="Model family (see MODELS).")],
    split_name: Annotated[str, typer.Option("--split", help="loo or temporal.")] = "loo",
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs.")] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option("--set", help="key=value for the model config or training."),
    ] = None,
    margin: Annotated[
        float, typer.Option(help="Gain on the gate metric the candidate must show (CI low).")
    ] = 0.0,
    metric: Annotated[str, typer.Option(help="The promotion gate's metric.")] = "ndcg@10",
    promote: Annotated[
        bool,
        typer.Option("--promote/--no-promote", help="Run the promotion gate after registering."),
    ] = True,
    window_days: Annotated[
        float | None,
        typer.Option(
            help="Train on the last N days of events only. Default: RECSYS_TRAIN_WINDOW_DAYS.",
        ),
    ] = None,
    nproc: Annotated[
        int,
        typer.Option(
            help="Processes that train the model together (torch.distributed; one GPU each "
            "with device=cuda).",
            min=1,
            max=64,
        ),
    ] = 1,
    eval_users: Annotated[
        int | None,
        typer.Option(
            help="Validate and test on a seeded sample of this many users (wider CIs, much "
            "faster on millions of users). Default: all.",
            min=1,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Train, evaluate on the test targets, export to ONNX, register, and gate vs the champion."""
    from recsys import registry
    from recsys.data.splits import PROTOCOLS
    from recsys.db.migrate import require_current
    from recsys.experiment import train_and_evaluate
    from recsys.models import parse_settings, spec
    from recsys.pipeline import check_gate_metric, register_and_gate
    from recsys.training import TrainConfig

    spec(model)
    if split_name not in PROTOCOLS:
        raise RecsysError(f"unknown split {split_name!r}; choose from: {', '.join(PROTOCOLS)}")
    model_config, overrides = parse_settings(model, settings or [], TrainConfig)
    if epochs is not None:
        overrides["max_epochs"] = epochs
    settings_now = get_settings()
    engine = engine_of(settings_now)
    require_current(engine)
    outcome = train_and_evaluate(
        engine,
        model,
        split_name,  # type: ignore[arg-type]
        model_config=model_config,
        train_overrides=overrides,
        window_days=settings_now.train_window_days if window_days is None else window_days,
        nproc=nproc,
        eval_users=eval_users,
    )
    check_gate_metric(outcome, metric)
    registered = register_and_gate(
        engine,
        outcome,
        artifacts_dir=settings_now.artifacts_dir,
        actor=registry.actor("promotion gate (recsys train)"),
        metric=metric,
        margin=margin,
        gate=promote,
    )
    record, decision = registered.record, registered.decision
    data = outcome.to_dict()
    data.update(registered.to_dict())
    if as_json:
        emit(data, True)
        return
    typer.echo(
        f"{model} on {split_name}: {data['epochs']} epochs (best {data['best_epoch']}, "
        f"stopped: {data['stopped']}), {data['seconds']:.1f}s, "
        f"{data['evaluated_users']:,} test users"
    )
    typer.echo(f"{'metric':<12} {'value':>8}  95% CI")
    for name, stats in data["metrics"].items():
        typer.echo(
            f"{name:<12} {stats['value']:>8.4f}  [{stats['ci_low']:.4f}, {stats['ci_high']:.4f}]"
        )
    parity = record.parity or {}
    typer.echo(
        f"registered v{record.version} ({record.status}); ONNX parity "
        f"{'passed' if parity.get('passed') else 'FAILED'}, max |diff| "
        f"{parity.get('max_abs_diff')}; artifact {record.artifact_path}"
    )
    index = parity.get("retrieval")
    if index:
        typer.echo(
            f"item index: {'passed' if index['passed'] else 'FAILED'}, recall@10 "
            f"{index['recall_at_10']} on {index['users']} test users ({index['index']['probes']} "
            f"of {index['index']['lists']} cells searched)"
        )
    if decision is not None:
        verdict = "promoted to champion" if decision.promoted else "not promoted"
        typer.echo(f"gate: {verdict}: {decision.reason}")


@user_errors
def evaluate_version(
    version: Annotated[str, typer.Argument(help="Version number or alias (champion).")],
    as_json: JsonOption = False,
) -> None:
    """Evaluate a registered version's ONNX artifact on the current data (its own protocol)."""
    from recsys import registry
    from recsys.data.extract import extract
    from recsys.data.splits import split
    from recsys.registry.promotion import evaluate_artifact

    engine = current_engine(migrated=True)
    artifact = registry.load_artifact(engine, version_ref(version))
    record = registry.get_version(engine, artifact.version)
    snapshot = extract(engine)
    data = split(snapshot, record.protocol or "loo")  # type: ignore[arg-type]
    result = evaluate_artifact(artifact, data, snapshot.users, snapshot.items)
    out = {
        "version": artifact.version,
        "family": artifact.family,
        "protocol": data.protocol,
        "evaluated_users": result.num_users,
        "snapshot": snapshot.descriptor.to_dict(),
        "metrics": result.summary(),
        "registered_metrics": record.metrics,
    }
    if as_json:
        emit(out, True)
        return
    typer.echo(
        f"v{artifact.version} ({artifact.family}) on the current data, {data.protocol}, "
        f"{result.num_users:,} test users (snapshot {snapshot.descriptor.digest[:12]})"
    )
    typer.echo(f"{'metric':<12} {'now':>8}  {'95% CI':<18}  {'registered':>10}")
    for name, stats in result.summary().items():
        then = record.metric(name)
        then_text = f"{then:>10.4f}" if then is not None else f"{'-':>10}"
        typer.echo(
            f"{name:<12} {stats['value']:>8.4f}  [{stats['ci_low']:.4f}, {stats['ci_high']:.4f}]"
            f"  {then_text}"
        )


@models_app.command("list")
@user_errors
def models_list(
    include_all: Annotated[
        bool, typer.Option("--all", help="Also pending, failed and abandoned registrations.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Registered versions, newest first, with their aliases and headline metrics."""
    from recsys import registry

    engine = current_engine(migrated=True)
    records = registry.list_versions(engine, include_hidden=include_all)
    if as_json:
        emit({"versions": [r.to_dict() for r in records]}, True)
        return
    if not records:
        typer.echo("no registered versions yet: `recsys train --model sasrec` registers one")
        return
    typer.echo(
        f"{'version':>7}  {'family':<8} {'status':<10} {'aliases':<10} {'protocol':<8} "
        f"{'ndcg@10':>8} {'hr@10':>7}  {'created (UTC)':<19}  {'snapshot':<12}  lineage"
    )
    for r in records:
        ndcg, hr = r.metric("ndcg@10"), r.metric("hr@10")
        # A refit carries its measured run's metrics: the lineage column says whose.
        lineage = "-" if r.refit_of is None else f"refit of v{r.refit_of}"
        typer.echo(
            f"{r.version:>7}  {r.family:<8} {r.status:<10} {','.join(r.aliases) or '-':<10} "
            f"{r.protocol or '-':<8} {fmt(ndcg):>8} {fmt(hr):>7}  "
            f"{r.created_at.strftime('%Y-%m-%d %H:%M:%S')}  "
            f"{(r.snapshot_digest or '-')[:12]:<12}  {lineage}"
        )


@models_app.command("show")
@user_errors
def models_show(
    version: Annotated[str, typer.Argument(help="Version number or alias.")],
    as_json: JsonOption = False,
) -> None:
    """Everything recorded about one version: lineage, metrics, parity, gate decision, moves."""
    from recsys import registry

    engine = current_engine()
    number = version_number(engine, version)
    record = registry.get_version(engine, number, include_hidden=True)
    moves = [
        m.to_dict()
        for m in registry.alias_history(engine)
        if number in (m.from_version, m.to_version)
    ]
    data = record.to_dict()
    data["alias_moves"] = moves
    data["online_last_7_days"] = _online_rows(engine, number)
    if as_json:
        emit(data, True)
        return
    print_mapping(
        {
            k: (json.dumps(v, default=str) if isinstance(v, list) else v)
            for k, v in data.items()
            if k not in ("train_config", "alias_moves")
        }
    )
    for row in data["online_last_7_days"]:
        typer.echo("online (7 days): " + ", ".join(f"{k} {v}" for k, v in row.items()))
    for move in moves:
        typer.echo(
            f"{move['occurred_at']} {move['alias']} {move['action']}: "
            f"v{move['from_version']} -> v{move['to_version']} by {move['actor']}: {move['reason']}"
        )


@models_app.command("promote")
@user_errors
def models_promote(
    version: Annotated[str, typer.Argument(help="Version number to make champion.")],
    reason: Annotated[str, typer.Option(help="Why (recorded with the move).")] = "manual promotion",
    alias: Annotated[str, typer.Option(help="champion or challenger.")] = "champion",
    as_json: JsonOption = False,
) -> None:
    """Point the champion (or challenger) at a servable version by hand; the move is recorded."""
    from recsys import registry

    engine = current_engine()
    move = registry.promote(
        engine,
        version_number(engine, version),
        actor=registry.actor("recsys models promote"),
        reason=reason,
        alias=alias,
    )
    _emit_move(move, as_json)


@models_app.command("rollback")
@user_errors
def models_rollback(
    reason: Annotated[str, typer.Option(help="Why (recorded with the move).")] = "manual rollback",
    as_json: JsonOption = False,
) -> None:
    """Move the champion back to the version it pointed at before the current one."""
    from recsys import registry

    engine = current_engine()
    move = registry.rollback(engine, actor=registry.actor("recsys models rollback"), reason=reason)
    _emit_move(move, as_json)


def _emit_move(move: Any, as_json: bool) -> None:
    data = move.to_dict()
    if as_json:
        emit(data, True)
        return
    typer.echo(
        f"{move.alias}: v{move.from_version} -> v{move.to_version} ({move.action}, {move.reason})"
    )


@models_app.command("sweep")
@user_errors
def models_sweep(
    older_than_hours: Annotated[
        float,
        typer.Option(
            min=0,
            help="Only sweep registrations started at least this many hours ago; younger "
            "ones may still be running and are left alone (0: sweep them all).",
        ),
    ] = 6.0,
    as_json: JsonOption = False,
) -> None:
    """Clear what crashed registrations left behind (pending rows, .partial folders).

    Says what it left alone: registrations younger than --older-than-hours (default 6).
    """
    from datetime import timedelta

    from recsys.registry.housekeeping import sweep

    settings = get_settings()
    result = sweep(
        engine_of(settings), settings.artifacts_dir, older_than=timedelta(hours=older_than_hours)
    )
    rows, folders = len(result["left_pending_versions"]), result["left_partial_folders"]
    left = [
        f"{rows} pending registration{'s' if rows != 1 else ''}" if rows else "",
        f"{folders} .partial folder{'s' if folders != 1 else ''}" if folders else "",
    ]
    note = None
    if rows or folders:
        note = (
            f"{' and '.join(part for part in left if part)} younger than {older_than_hours:g}h "
            "left alone (may still be running); use --older-than-hours 0 to sweep them"
        )
    data = {**result, "older_than_hours": older_than_hours, "note": note}

    def table() -> None:
        print_mapping({k: v for k, v in data.items() if k != "note"})
        if note:
            typer.echo(note)

    emit(data, as_json, table)


def _online_rows(engine: Any, version: int) -> list[dict[str, Any]]:
    """How ``version`` did online in the last 7 days, per arm (empty if never served)."""
    from recsys.config import get_settings
    from recsys.online.metrics import recent_online_metrics, summary_row

    settings = get_settings()
    groups = recent_online_metrics(
        engine,
        click_events=settings.click_events.split(","),
        conversion_events=settings.conversion_events.split(","),
        window_seconds=settings.attribution_window_seconds,
    )
    return [summary_row(g) for g in groups if g.model_version == version]
