"""The ``recsys`` command line: parses, calls library functions, prints tables or JSON.

Every command prints a human table by default and one JSON object as its last line with
``--json``. User errors exit non-zero with a one-line reason and no traceback.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from recsys.config import Settings, get_settings
from recsys.data.frames import ImportBatch
from recsys.errors import RecsysError

app = typer.Typer(
    help="recsys: deep-learning recommendations from SQL to a served ONNX model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
import_app = typer.Typer(help="Load interactions and catalogue data.", no_args_is_help=True)
generate_app = typer.Typer(help="Generate data.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(import_app, name="import")
models_app = typer.Typer(help="The model registry: versions and aliases.", no_args_is_help=True)
app.add_typer(generate_app, name="generate")
app.add_typer(models_app, name="models")
keys_app = typer.Typer(help="API keys of the prediction API.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line.")]
StrictOption = Annotated[
    bool, typer.Option("--strict", help="Any rejected row fails the import; nothing is written.")
]

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(func: F) -> F:
    """Turn user-caused failures into one line on stderr and exit code 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except RecsysError as exc:
            _fail(str(exc))
        except OperationalError as exc:
            _fail(f"database error: {str(exc.orig).strip().splitlines()[0]}")
        except SQLAlchemyError as exc:
            _fail(f"database error: {str(exc).strip().splitlines()[0]}")
        except KeyboardInterrupt:
            _fail("interrupted")

    return wrapper  # type: ignore[return-value]


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


def _emit(data: dict[str, Any], as_json: bool, table: Callable[[], None] | None = None) -> None:
    if as_json:
        typer.echo(json.dumps(data, default=str))
    elif table is not None:
        table()
    else:
        _print_mapping(data)


def _print_mapping(data: dict[str, Any], indent: int = 0) -> None:
    width = max((len(k) for k in data), default=0)
    for key, value in data.items():
        if isinstance(value, dict):
            typer.echo(f"{' ' * indent}{key}:")
            _print_mapping(value, indent + 2)
        else:
            shown = (
                f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else value
            )
            typer.echo(f"{' ' * indent}{key:<{width}}  {shown}")


def _engine(settings: Settings) -> Engine:
    from recsys.db.engine import create_engine

    return create_engine(settings.database_url)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@db_app.command("upgrade")
@user_errors
def db_upgrade(
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
    as_json: JsonOption = False,
) -> None:
    """Apply migrations to RECSYS_DATABASE_URL."""
    from recsys.db.migrate import upgrade

    settings = get_settings()
    before = _current(settings)
    after = upgrade(settings.database_url, revision)
    data = {"database": _safe_url(settings.database_url), "from": before, "to": after}
    _emit(data, as_json)


@db_app.command("current")
@user_errors
def db_current(as_json: JsonOption = False) -> None:
    """Show the schema revision of the database and the latest one the code knows."""
    from recsys.db.migrate import head_revision

    settings = get_settings()
    data = {
        "database": _safe_url(settings.database_url),
        "current": _current(settings),
        "head": head_revision(),
    }
    _emit(data, as_json)


def _current(settings: Settings) -> str | None:
    from recsys.db.migrate import current_revision

    return current_revision(settings.database_url)


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _ingest(batch: ImportBatch, strict: bool, as_json: bool) -> None:
    from recsys.data.ingest import ingest

    settings = get_settings()
    result = ingest(_engine(settings), batch, settings.rejects_dir, strict=strict)
    data = {
        "source": result.source,
        "import_id": result.import_id,
        "rows_read": result.rows_read,
        "rows_inserted": result.rows_inserted,
        "rows_already_stored": result.rows_skipped,
        "rows_rejected": result.rows_rejected,
        "rejects_by_reason": result.rejects_by_reason,
        "catalogue_rows_rejected": result.catalogue_rejected,
        "catalogue_rejects_by_reason": result.catalogue_rejects_by_reason,
        "rejects_file": result.rejects_path,
        "users": result.users_total,
        "items": result.items_total,
        "seconds": round(result.seconds, 3),
        "rows_per_second": round(result.rows_per_second),
    }
    _emit(data, as_json)


@import_app.command("movielens")
@user_errors
def import_movielens(
    path: Annotated[Path, typer.Argument(help="ml-100k, ml-1m, ml-10m or ml-latest folder.")],
    strict: StrictOption = False,
    as_json: JsonOption = False,
) -> None:
    """Import a MovieLens release (detected from the folder's files)."""
    from recsys.data.importers import import_movielens as read

    _ingest(read(path), strict, as_json)


@import_app.command("csv")
@user_errors
def import_csv(
    path: Annotated[Path, typer.Argument(help="CSV/TSV, or Parquet (.parquet) event file.")],
    user_col: Annotated[str, typer.Option(help="Column with the user id.")],
    item_col: Annotated[str, typer.Option(help="Column with the item id.")],
    time_col: Annotated[str | None, typer.Option(help="Epoch s/ms or ISO 8601 time.")] = None,
    rating_col: Annotated[str | None, typer.Option(help="Numeric value (rating, price).")] = None,
    event_type: Annotated[str, typer.Option(help="Event type for every row.")] = "interaction",
    event_type_col: Annotated[str | None, typer.Option(help="Column with the event type.")] = None,
    time_unit: Annotated[str, typer.Option(help="auto, s or ms for numeric times.")] = "auto",
    min_rating: Annotated[float | None, typer.Option(help="Reject values below.")] = None,
    max_rating: Annotated[float | None, typer.Option(help="Reject values above.")] = None,
    delimiter: Annotated[
        str | None, typer.Option(help="Field separator (default by suffix).")
    ] = None,
    items: Annotated[Path | None, typer.Option(help="CSV of item attributes.")] = None,
    users: Annotated[Path | None, typer.Option(help="CSV of user attributes.")] = None,
    strict: StrictOption = False,
    as_json: JsonOption = False,
) -> None:
    """Import an event log; rows keep file order when there is no time column."""
    from recsys.data.importers import CsvColumns, import_events
    from recsys.data.readers import ValueRange

    value_range = None
    if min_rating is not None or max_rating is not None:
        value_range = ValueRange(
            float("-inf") if min_rating is None else min_rating,
            float("inf") if max_rating is None else max_rating,
        )
    columns = CsvColumns(user_col, item_col, time_col, rating_col, event_type_col)
    batch = import_events(
        path,
        columns,
        event_type=event_type,
        time_unit=time_unit,
        value_range=value_range,
        delimiter=delimiter,
        items_path=items,
        users_path=users,
    )
    _ingest(batch, strict, as_json)


@import_app.command("sequences")
@user_errors
def import_sequences(
    path: Annotated[Path, typer.Argument(help='Lines of "user item item ..." in time order.')],
    strict: StrictOption = False,
    as_json: JsonOption = False,
) -> None:
    """Import user sequences (e.g. the Amazon 5-core files of the sequential literature)."""
    from recsys.data.importers import import_sequences as read

    _ingest(read(path), strict, as_json)


@generate_app.command("synthetic")
@user_errors
def generate_synthetic(
    users: Annotated[int, typer.Option(help="Number of users.")] = 1000,
    items: Annotated[int, typer.Option(help="Number of items.")] = 500,
    interactions: Annotated[int, typer.Option(help="Number of interactions.")] = 20000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 0,
    out: Annotated[Path | None, typer.Option(help="Write CSVs here instead of loading.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Reproducible data with long-tail popularity, taste clusters and sequential habits."""
    from recsys.data.frames import write_csv
    from recsys.data.synthetic import SyntheticConfig, generate

    batch = generate(SyntheticConfig(users, items, interactions, seed=seed))
    if out is not None:
        paths = write_csv(batch, out)
        _emit({k: str(v) for k, v in paths.items()}, as_json)
        return
    _ingest(batch, strict=True, as_json=as_json)


@app.command("stats")
@user_errors
def stats(
    quality: Annotated[
        bool, typer.Option("--quality", help="Extract a snapshot and add its quality report.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Counts of users, items, interactions per event type, and the time range."""
    from recsys.db.migrate import require_current
    from recsys.db.queries import stats as read_stats

    settings = get_settings()
    engine = _engine(settings)
    require_current(engine)
    data = read_stats(engine)
    report = None
    if quality:
        from recsys.data.extract import extract
        from recsys.data.validation import quality_report

        snapshot = extract(engine)
        report = quality_report(snapshot)
        data["snapshot"] = snapshot.descriptor.to_dict()
        data["quality"] = report.to_dict()
    if as_json:
        _emit(data, True)
        return
    _print_mapping({k: v for k, v in data.items() if k not in ("quality", "snapshot")})
    if report is not None:
        typer.echo("")
        typer.echo(report.to_markdown())


@app.command("train")
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
    as_json: JsonOption = False,
) -> None:
    """Train, evaluate on the test targets, export to ONNX, register, and gate vs the champion."""
    from recsys import registry
    from recsys.data.splits import PROTOCOLS
    from recsys.db.migrate import require_current
    from recsys.experiment import train_and_evaluate
    from recsys.models import parse_settings, spec
    from recsys.training import TrainConfig

    spec(model)
    if split_name not in PROTOCOLS:
        raise RecsysError(f"unknown split {split_name!r}; choose from: {', '.join(PROTOCOLS)}")
    model_config, overrides = parse_settings(model, settings or [], TrainConfig)
    if epochs is not None:
        overrides["max_epochs"] = epochs
    settings_now = get_settings()
    engine = _engine(settings_now)
    require_current(engine)
    outcome = train_and_evaluate(
        engine,
        model,
        split_name,  # type: ignore[arg-type]
        model_config=model_config,
        train_overrides=overrides,
    )
    if metric not in outcome.test.per_user:
        raise RecsysError(
            f"{metric!r} is not a per-user metric of the {split_name} protocol: "
            f"use one of {', '.join(outcome.test.per_user)}"
        )
    record = registry.register(engine, outcome, artifacts_dir=settings_now.artifacts_dir)
    decision = None
    if promote:
        decision = registry.gate(
            engine,
            record.version,
            outcome.test,
            outcome.split,
            outcome.snapshot.users,
            outcome.snapshot.items,
            metric=metric,
            margin=margin,
            actor=registry.actor("promotion gate (recsys train)"),
        )
    data = outcome.to_dict()
    data.update(
        version=record.version,
        status=record.status,
        artifact=record.artifact_path,
        onnx_sha256=record.onnx_sha256,
        parity=record.parity,
        gate=None if decision is None else decision.to_dict(),
        champion=registry.alias_version(engine, registry.CHAMPION),
    )
    if as_json:
        _emit(data, True)
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
    if decision is not None:
        verdict = "promoted to champion" if decision.promoted else "not promoted"
        typer.echo(f"gate: {verdict}: {decision.reason}")


@app.command("evaluate")
@user_errors
def evaluate_version(
    version: Annotated[str, typer.Argument(help="Version number or alias (champion).")],
    as_json: JsonOption = False,
) -> None:
    """Evaluate a registered version's ONNX artifact on the current data (its own protocol)."""
    from recsys import registry
    from recsys.data.extract import extract
    from recsys.data.splits import split
    from recsys.db.migrate import require_current

    settings = get_settings()
    engine = _engine(settings)
    require_current(engine)
    artifact = registry.load_artifact(engine, _version_ref(version))
    record = registry.get_version(engine, artifact.version)
    snapshot = extract(engine)
    data = split(snapshot, record.protocol or "loo")  # type: ignore[arg-type]
    result = registry.evaluate_artifact(artifact, data, snapshot.users, snapshot.items)
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
        _emit(out, True)
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


def _version_ref(text: str) -> int | str:
    """A version number (``3`` or ``v3``) or an alias name."""
    from recsys.registry import ALIASES

    digits = text[1:] if text[:1] in ("v", "V") else text
    if digits.isdigit():
        return int(digits)
    if text in ALIASES:
        return text
    raise RecsysError(f"{text!r} is neither a version number nor an alias ({', '.join(ALIASES)})")


def _version_number(text: str) -> int:
    from recsys import registry

    ref = _version_ref(text)
    if isinstance(ref, int):
        return ref
    number = registry.alias_version(_engine(get_settings()), ref)
    if number is None:
        raise RecsysError(f"there is no {ref} yet")
    return number


@keys_app.command("create")
@user_errors
def keys_create(
    name: Annotated[str, typer.Argument(help="A name for the key (who or what uses it).")],
    scope: Annotated[
        list[str],
        typer.Option("--scope", "-s", help="read, events or admin (repeat, or a,b)."),
    ],
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print the key alone (for scripts).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Make an API key; it is printed once and only its hash is stored."""
    from recsys import keys
    from recsys.db.migrate import require_current

    engine = _engine(get_settings())
    require_current(engine)
    secret, record = keys.create_key(engine, name, scope)
    data = {"name": record.name, "prefix": record.prefix, "scopes": list(record.scopes)}
    if as_json:
        _emit({**data, "key": secret}, True)
        return
    if quiet:
        typer.echo(secret)
        return
    typer.echo(f"key {record.name!r} ({','.join(record.scopes)}); shown once, store it now:")
    typer.echo(secret)


@keys_app.command("list")
@user_errors
def keys_list(as_json: JsonOption = False) -> None:
    """Every key with its scopes and whether it is revoked (never the key itself)."""
    from recsys import keys
    from recsys.db.migrate import require_current

    engine = _engine(get_settings())
    require_current(engine)
    records = keys.list_keys(engine)
    rows = [
        {
            "name": k.name,
            "prefix": k.prefix,
            "scopes": list(k.scopes),
            "created_at": k.created_at.isoformat(),
            "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
        }
        for k in records
    ]

    def table() -> None:
        if not records:
            typer.echo("no keys yet: `recsys keys create NAME --scope read`")
            return
        typer.echo(f"{'name':<24} {'prefix':<10} {'scopes':<18} {'created (UTC)':<19}  revoked")
        for k in records:
            revoked = k.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if k.revoked_at else "-"
            typer.echo(
                f"{k.name:<24} {k.prefix:<10} {','.join(k.scopes):<18} "
                f"{k.created_at.strftime('%Y-%m-%d %H:%M:%S'):<19}  {revoked}"
            )

    _emit({"keys": rows}, as_json, table)


@keys_app.command("revoke")
@user_errors
def keys_revoke(
    name: Annotated[str, typer.Argument(help="The key's name or prefix.")],
    as_json: JsonOption = False,
) -> None:
    """Revoke a key: the service refuses it within seconds (it re-reads keys every 5 s)."""
    from recsys import keys
    from recsys.db.migrate import require_current

    engine = _engine(get_settings())
    require_current(engine)
    record = keys.revoke_key(engine, name)
    _emit({"name": record.name, "prefix": record.prefix, "revoked": True}, as_json)


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
    from recsys.db.migrate import require_current

    engine = _engine(get_settings())
    require_current(engine)
    records = registry.list_versions(engine, include_hidden=include_all)
    if as_json:
        _emit({"versions": [r.to_dict() for r in records]}, True)
        return
    if not records:
        typer.echo("no registered versions yet: `recsys train --model sasrec` registers one")
        return
    typer.echo(
        f"{'version':>7}  {'family':<8} {'status':<10} {'aliases':<10} {'protocol':<8} "
        f"{'ndcg@10':>8} {'hr@10':>7}  {'created (UTC)':<19}  snapshot"
    )
    for r in records:
        ndcg, hr = r.metric("ndcg@10"), r.metric("hr@10")
        typer.echo(
            f"{r.version:>7}  {r.family:<8} {r.status:<10} {','.join(r.aliases) or '-':<10} "
            f"{r.protocol or '-':<8} {_fmt(ndcg):>8} {_fmt(hr):>7}  "
            f"{r.created_at.strftime('%Y-%m-%d %H:%M:%S')}  {(r.snapshot_digest or '-')[:12]}"
        )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@models_app.command("show")
@user_errors
def models_show(
    version: Annotated[str, typer.Argument(help="Version number or alias.")],
    as_json: JsonOption = False,
) -> None:
    """Everything recorded about one version: lineage, metrics, parity, gate decision, moves."""
    from recsys import registry

    engine = _engine(get_settings())
    number = _version_number(version)
    record = registry.get_version(engine, number, include_hidden=True)
    moves = [
        m.to_dict()
        for m in registry.alias_history(engine)
        if number in (m.from_version, m.to_version)
    ]
    data = record.to_dict()
    data["alias_moves"] = moves
    if as_json:
        _emit(data, True)
        return
    _print_mapping(
        {
            k: (json.dumps(v, default=str) if isinstance(v, list) else v)
            for k, v in data.items()
            if k not in ("train_config", "alias_moves")
        }
    )
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

    engine = _engine(get_settings())
    move = registry.promote(
        engine,
        _version_number(version),
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

    engine = _engine(get_settings())
    move = registry.rollback(engine, actor=registry.actor("recsys models rollback"), reason=reason)
    _emit_move(move, as_json)


def _emit_move(move: Any, as_json: bool) -> None:
    data = move.to_dict()
    if as_json:
        _emit(data, True)
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

    from recsys import registry

    settings = get_settings()
    result = registry.sweep(
        _engine(settings), settings.artifacts_dir, older_than=timedelta(hours=older_than_hours)
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
        _print_mapping({k: v for k, v in data.items() if k != "note"})
        if note:
            typer.echo(note)

    _emit(data, as_json, table)


@app.command("recommend")
@user_errors
def recommend(
    user_id: Annotated[str, typer.Argument(help="External user id.")],
    k: Annotated[int, typer.Option("-k", "--k", help="How many items.", min=1, max=1000)] = 10,
    version: Annotated[
        str, typer.Option(help="Version number or alias to score with.")
    ] = "champion",
    include_seen: Annotated[
        bool, typer.Option("--include-seen", help="Do not exclude items the user has seen.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Top-k for a user from the champion's ONNX graph (onnxruntime) and their live history."""
    from recsys import registry
    from recsys.artifacts import recommend as rank
    from recsys.db.queries import item_titles, user_history

    engine = _engine(get_settings())
    artifact = registry.load_artifact(engine, _version_ref(version))
    history = user_history(engine, user_id)
    ranked = rank(artifact, history or [], user_id=user_id, k=k, exclude_seen=not include_seen)
    titles = item_titles(engine, ranked.item_ids)
    items = [
        {"rank": n, "item_id": item, "title": titles.get(item), "score": round(score, 6)}
        for n, (item, score) in enumerate(zip(ranked.item_ids, ranked.scores, strict=True), 1)
    ]
    data = {
        "user_id": user_id,
        "known_user": history is not None,
        "history_length": len(history or []),
        "model": artifact.family,
        "version": artifact.version,
        "fallback": ranked.fallback,
        "unknown_history_items": len(ranked.unknown_items),
        "items": [
            {"rank": n, "item_id": item, "title": titles.get(item), "score": round(score, 6)}
            for n, (item, score) in enumerate(
                zip(ranked.item_ids, ranked.scores, strict=True), start=1
            )
        ],
    }
    if as_json:
        _emit(data, True)
        return
    note = f", fallback: {ranked.fallback}" if ranked.fallback else ""
    typer.echo(
        f"user {user_id}: {data['history_length']} events; {artifact.family} "
        f"v{artifact.version}{note}"
    )
    typer.echo(f"{'rank':>4}  {'item':<12} {'score':>10}  title")
    for row in items:
        typer.echo(
            f"{row['rank']:>4}  {row['item_id']:<12} {row['score']:>10.4f}  {row['title'] or ''}"
        )


@app.command("serve")
@user_errors
def serve(
    port: Annotated[int, typer.Option(help="HTTP port.")] = 3000,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    bento: Annotated[
        str | None, typer.Option(help="Serve a built bento (e.g. recsys:latest) instead.")
    ] = None,
) -> None:
    """Start the prediction API (BentoML) on the registry's current champion."""
    import os
    import sys

    from recsys import registry

    settings = get_settings()
    champion = registry.alias_version(_engine(settings), registry.CHAMPION)
    if champion is None and bento is None:
        typer.echo(
            "no champion yet: the service answers /readyz with 503 until one is promoted",
            err=True,
        )
    executable = str(Path(sys.executable).with_name("bentoml"))
    target = bento or "serving.service:RecsysService"
    typer.echo(f"serving {target} (champion v{champion}) on http://{host}:{port}", err=True)
    os.execv(executable, [executable, "serve", target, "--host", host, "--port", str(port)])


@app.command("bento")
@user_errors
def build_bento(
    version: Annotated[str, typer.Option(help="Version number or alias to package.")] = "champion",
    as_json: JsonOption = False,
) -> None:
    """Package a version as a bento: its artifact into BentoML's model store, then build."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "serving.bento", "--version", version],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise RecsysError(f"bento build failed: {lines[-1] if lines else done.returncode}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    _emit(data, as_json)


def _run_flow(module: str, args: list[str]) -> dict[str, Any]:
    """Run a flow module in a subprocess (the library never imports Prefect); its JSON result."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
    )
    lines = done.stdout.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        result = {}
    if done.returncode != 0 or not result:
        errors = [line for line in done.stderr.strip().splitlines() if line.strip()]
        reason = result.get("error") or (errors[-1] if errors else f"exit {done.returncode}")
        raise RecsysError(f"{module.split('.')[-1]} failed: {reason}")
    return result


@app.command("retrain")
@user_errors
def retrain(
    models: Annotated[
        str, typer.Option(help="Comma-separated model families.")
    ] = "sasrec,gru4rec,ease",
    split_name: Annotated[str, typer.Option("--split", help="loo or temporal.")] = "loo",
    margin: Annotated[float, typer.Option(help="Gain the candidate must show (CI low).")] = 0.0,
    force: Annotated[bool, typer.Option("--force", help="Retrain even if no new data.")] = False,
    build_bento: Annotated[
        bool, typer.Option("--build-bento", help="Build a bento on promotion.")
    ] = False,
    budget_seconds: Annotated[
        float | None, typer.Option(help="Training time budget per model.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Run the Prefect retrain flow once and print its decision."""
    from recsys.models import spec

    for name in models.split(","):
        spec(name.strip())
    args = ["--models", models, "--split", split_name, "--margin", str(margin)]
    args += ["--budget-seconds", str(budget_seconds)] if budget_seconds else []
    args += ["--force"] if force else []
    args += ["--build-bento"] if build_bento else []
    result = _run_flow("flows.retrain", args)
    if as_json:
        _emit(result, True)
        return
    typer.echo(f"retrain {result['status']}: {result['reason']}")
    for row in result.get("candidates", []):
        typer.echo(
            f"  v{row['version']} {row['model']:<8} {row['status']:<10} "
            f"ndcg@10 {row.get('ndcg@10', float('nan')):.4f} {row.get('ndcg@10 ci', '')}"
        )
    if result.get("report_path"):
        typer.echo(f"report: {result['report_path']}")


@app.command("batch")
@user_errors
def batch(
    k: Annotated[int, typer.Option("-k", "--k", help="Items per user.", min=1, max=1000)] = 10,
    as_json: JsonOption = False,
) -> None:
    """Run the batch flow: the champion's top-k for every user into `recommendations`."""
    _emit(_run_flow("flows.batch", ["-k", str(k)]), as_json)


@app.command("schedule")
@user_errors
def schedule(
    cron: Annotated[str, typer.Option(help="Cron schedule of the retrain (UTC).")] = "0 3 * * *",
    models: Annotated[
        str, typer.Option(help="Comma-separated model families.")
    ] = "sasrec,gru4rec,ease",
    apply_only: Annotated[
        bool, typer.Option("--apply-only", help="Register the deployment and exit.")
    ] = False,
) -> None:
    """Create the scheduled retrain deployment and, unless --apply-only, serve its runs."""
    import os
    import sys

    args = [sys.executable, "-m", "flows.deploy", "--cron", cron, "--models", models]
    if apply_only:
        typer.echo(json.dumps(_run_flow("flows.deploy", [*args[3:], "--apply-only"])))
        return
    os.execv(sys.executable, args)


@app.command("demo")
@user_errors
def demo(
    data: Annotated[
        Path | None, typer.Option(help="A MovieLens folder to import instead of synthetic data.")
    ] = None,
    users: Annotated[int, typer.Option(help="Synthetic users.")] = 2000,
    items: Annotated[int, typer.Option(help="Synthetic items.")] = 1000,
    interactions: Annotated[int, typer.Option(help="Synthetic interactions.")] = 60000,
    models: Annotated[str, typer.Option(help="Model families to train.")] = "sasrec,gru4rec,ease",
    budget_seconds: Annotated[float, typer.Option(help="Training budget per model.")] = 60.0,
) -> None:
    """The whole path on the embedded default: data, retrain flow, champion, live service."""
    from recsys.db.migrate import upgrade

    settings = get_settings()
    started = time.perf_counter()
    typer.echo(f"recsys demo: home {settings.home}, database {_safe_url(settings.database_url)}")
    revision = upgrade(settings.database_url)
    typer.echo(f"1. migrated the database to schema revision {revision}")
    engine = _engine(settings)
    if data is not None:
        from recsys.data.importers import import_movielens
        from recsys.data.ingest import ingest

        loaded = ingest(engine, import_movielens(data), settings.rejects_dir)
        typer.echo(
            f"2. imported {data}: {loaded.rows_inserted:,} new, {loaded.rows_skipped:,} already "
            f"stored, {loaded.rows_rejected:,} rejected"
        )
    else:
        _demo_synthetic(settings, engine, users, items, interactions)

    typer.echo(f"3. running the retrain flow (Prefect) on {models}, {budget_seconds:g}s each ...")
    result = _run_flow(
        "flows.retrain", ["--models", models, "--budget-seconds", str(budget_seconds)]
    )
    typer.echo(f"   {result['status']}: {result['reason']}")
    for row in result.get("candidates", []):
        typer.echo(
            f"   v{row['version']} {row['model']:<8} ndcg@10 {row.get('ndcg@10', 0):.4f} "
            f"{row.get('ndcg@10 ci', '')}  ({row['train_seconds']:.0f}s)"
        )
    typer.echo(f"   report: {result.get('report_path')}")
    _demo_service(settings, engine)
    typer.echo(f"done in {time.perf_counter() - started:.1f}s; nothing left running")


def _demo_synthetic(
    settings: Settings, engine: Engine, users: int, items: int, interactions: int
) -> None:
    from recsys.data.frames import write_csv
    from recsys.data.importers import CsvColumns, import_events
    from recsys.data.ingest import ingest
    from recsys.data.synthetic import SyntheticConfig, generate

    folder = settings.home / "demo"
    paths = write_csv(generate(SyntheticConfig(users, items, interactions, seed=42)), folder)
    typer.echo(
        f"2. generated {interactions:,} synthetic interactions of {users:,} users on "
        f"{items:,} items (seed 42) as CSV files in {folder}"
    )
    columns = CsvColumns("user_id", "item_id", "occurred_at", "value", "event_type")
    for attempt in ("imported", "imported again"):
        parsed = import_events(
            paths["interactions"],
            columns,
            time_unit="ms",
            items_path=paths["items"],
            users_path=paths["users"],
        )
        result = ingest(engine, parsed, settings.rejects_dir)
        typer.echo(
            f"   {attempt} with the CSV importer: {result.rows_inserted:,} new, "
            f"{result.rows_skipped:,} already stored, {result.rows_rejected:,} rejected"
        )


def _demo_service(settings: Settings, engine: Engine) -> None:
    """Start the service, ask it for recommendations, print them, stop it."""
    import os
    import socket
    import subprocess
    import sys
    import uuid

    import httpx
    from sqlalchemy import func, select

    from recsys import keys
    from recsys.db.queries import user_history
    from recsys.db.schema import interactions_table, users_table

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    env = {
        **os.environ,
        "RECSYS_HOME": str(settings.home),
        "RECSYS_DATABASE_URL": settings.database_url,
    }
    log = settings.home / "demo-service.log"
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    with log.open("w") as out:
        process = subprocess.Popen(
            [bentoml, "serve", "serving.service:RecsysService", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    key_name = f"demo-{uuid.uuid4().hex[:8]}"
    secret, _ = keys.create_key(engine, key_name, [keys.READ])
    http = httpx.Client(headers={"Authorization": f"Bearer {secret}"}, timeout=30)
    try:
        deadline = time.monotonic() + 120
        while not _ready(base):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RecsysError(f"the service did not start; see {log}")
            time.sleep(0.3)
        typer.echo(f"4. started the service (BentoML) at {base} (with a read key for the demo)")
        with engine.connect() as conn:
            counts = (
                select(users_table.c.external_id, func.count().label("n"))
                .join(interactions_table, interactions_table.c.user_id == users_table.c.id)
                .group_by(users_table.c.external_id)
                .having(func.count() >= 5)
                .order_by(users_table.c.external_id)
                .limit(3)
            )
            known = [str(row[0]) for row in conn.execute(counts)]
        for n, user_id in enumerate(known):
            reply = http.post(
                f"{base}/recommend", json={"user_id": user_id, "k": 5, "explain": n == 0}
            ).json()
            _print_recommendations(f"user {user_id}", reply, explain=n == 0)
        session = (user_history(engine, known[0]) or [])[-3:]
        reply = http.post(f"{base}/recommend_session", json={"item_ids": session, "k": 5}).json()
        _print_recommendations(f"anonymous session {session}", reply, explain=False)
        reply = http.post(f"{base}/recommend", json={"user_id": "someone-new", "k": 5}).json()
        _print_recommendations("unknown user someone-new", reply, explain=False)
    finally:
        http.close()
        keys.revoke_key(engine, key_name)
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    typer.echo("5. stopped the service")


def _ready(base: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _print_recommendations(who: str, reply: dict[str, Any], explain: bool) -> None:
    if "items" not in reply:
        raise RecsysError(f"the service answered {reply}")
    fallback = f", fallback: {reply['fallback']}" if reply.get("fallback") else ""
    typer.echo(f"\n   {who}: {reply['model_family']} v{reply['model_version']}{fallback}")
    typer.echo(f"   {'rank':>4}  {'item':<10} {'score':>9}  title")
    for rank, item in enumerate(reply["items"], start=1):
        typer.echo(
            f"   {rank:>4}  {item['item_id']:<10} {item['score']:>9.4f}  {item['title'] or ''}"
        )
    if explain and reply["items"] and reply["items"][0].get("because"):
        reasons = ", ".join(
            f"{b['title'] or b['item_id']} ({b['weight']:.2f})"
            for b in reply["items"][0]["because"]
        )
        typer.echo(f"   why #1 ({reply['items'][0]['title']}): close to {reasons}")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="recsys")


if __name__ == "__main__":
    main()
