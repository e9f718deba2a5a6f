"""``recsys db``, ``recsys import``, ``recsys generate`` and ``recsys stats``: the schema and
the data in the store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from recsys.cli.output import (
    JsonOption,
    StrictOption,
    current_engine,
    emit,
    engine_of,
    print_mapping,
    safe_url,
    user_errors,
)
from recsys.config import get_settings

if TYPE_CHECKING:
    from recsys.data.frames import ImportBatch

db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
import_app = typer.Typer(help="Load interactions and catalogue data.", no_args_is_help=True)
generate_app = typer.Typer(help="Generate data.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
    app.add_typer(import_app, name="import")
    app.add_typer(generate_app, name="generate")
    app.command("stats")(stats)


@db_app.command("upgrade")
@user_errors
def db_upgrade(
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
    as_json: JsonOption = False,
) -> None:
    """Apply migrations to RECSYS_DATABASE_URL."""
    from recsys.db.migrate import current_revision, upgrade

    settings = get_settings()
    engine = engine_of(settings)
    before = current_revision(engine)
    after = upgrade(engine, revision)
    data = {"database": safe_url(settings.database_url), "from": before, "to": after}
    emit(data, as_json)


@db_app.command("current")
@user_errors
def db_current(as_json: JsonOption = False) -> None:
    """Show the schema revision of the database and the latest one the code knows."""
    from recsys.db.migrate import current_revision, head_revision

    settings = get_settings()
    data = {
        "database": safe_url(settings.database_url),
        "current": current_revision(engine_of(settings)),
        "head": head_revision(),
    }
    emit(data, as_json)


def _ingest(batch: ImportBatch, strict: bool, as_json: bool) -> None:
    from recsys.data.ingest import ingest

    settings = get_settings()
    result = ingest(engine_of(settings), batch, settings.rejects_dir, strict=strict)
    emit(result.report(), as_json)


@import_app.command("movielens")
@user_errors
def import_movielens(
    path: Annotated[Path, typer.Argument(help="ml-100k, ml-1m, ml-10m or ml-latest folder.")],
    strict: StrictOption = False,
    as_json: JsonOption = False,
) -> None:
    """Import a MovieLens release (detected from the folder's files)."""
    from recsys.data.import_kinds import read_import

    _ingest(read_import("movielens", path), strict, as_json)


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
    from recsys.data.import_kinds import EventFileOptions, read_import

    options = EventFileOptions(
        user_col=user_col,
        item_col=item_col,
        time_col=time_col,
        rating_col=rating_col,
        event_type=event_type,
        event_type_col=event_type_col,
        time_unit=time_unit,
        min_rating=min_rating,
        max_rating=max_rating,
        delimiter=delimiter,
        items=None if items is None else str(items),
        users=None if users is None else str(users),
    )
    _ingest(read_import("csv", path, options), strict, as_json)


@import_app.command("sequences")
@user_errors
def import_sequences(
    path: Annotated[Path, typer.Argument(help='Lines of "user item item ..." in time order.')],
    strict: StrictOption = False,
    as_json: JsonOption = False,
) -> None:
    """Import user sequences (e.g. the Amazon 5-core files of the sequential literature)."""
    from recsys.data.import_kinds import read_import

    _ingest(read_import("sequences", path), strict, as_json)


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
        emit({k: str(v) for k, v in paths.items()}, as_json)
        return
    _ingest(batch, strict=True, as_json=as_json)


@user_errors
def stats(
    quality: Annotated[
        bool, typer.Option("--quality", help="Extract a snapshot and add its quality report.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Counts of users, items, interactions per event type, and the time range."""
    from recsys.db.queries import stats as read_stats

    engine = current_engine(migrated=True)
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
        emit(data, True)
        return
    print_mapping({k: v for k, v in data.items() if k not in ("quality", "snapshot")})
    if report is not None:
        typer.echo("")
        typer.echo(report.to_markdown())
