"""``recsys sources check`` and ``recsys sources sync``: application databases as sources."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from recsys.cli.output import JsonOption, emit, engine_of, print_mapping, user_errors
from recsys.cli.runner import run_flow
from recsys.config import get_settings

sources_app = typer.Typer(
    help="Read events, items and users from the databases declared in RECSYS_SOURCES_FILE.",
    no_args_is_help=True,
)

NameArgument = Annotated[
    str | None, typer.Argument(help="One source by name (default: every source).")
]


def register(app: typer.Typer) -> None:
    app.add_typer(sources_app, name="sources")


@sources_app.command("check")
@user_errors
def check(name: NameArgument = None, as_json: JsonOption = False) -> None:
    """Connect to each source, find its columns and map a sample of its rows."""
    from recsys.sources.config import load_sources
    from recsys.sources.sync import check_source, select_sources

    settings = get_settings()
    chosen = select_sources(load_sources(settings.sources_file), name)
    store = engine_of(settings)
    try:
        reports = [check_source(source, store).report() for source in chosen]
    finally:
        store.dispose()
    _emit(reports, as_json)


@sources_app.command("sync")
@user_errors
def sync(
    name: NameArgument = None,
    as_flow: Annotated[
        bool,
        typer.Option(
            "--flow", help="Run it as the Prefect sync flow (retries, a report artifact)."
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Read each source's rows past its watermark into the store, then move the watermark.

    A source that another sync is reading is skipped (status `skipped`, naming that sync).
    """
    from recsys.sources.config import load_sources
    from recsys.sources.sync import select_sources, sync_source

    if as_flow:
        _emit(run_flow("sync", {"names": [name] if name else None})["sources"], as_json)
        return
    settings = get_settings()
    chosen = select_sources(load_sources(settings.sources_file), name)
    store = engine_of(settings)
    try:
        reports = [sync_source(store, source, settings.rejects_dir).report() for source in chosen]
    finally:
        store.dispose()
    _emit(reports, as_json)


def _emit(reports: list[dict[str, Any]], as_json: bool) -> None:
    def table() -> None:
        for i, report in enumerate(reports):
            if i:
                typer.echo("")
            print_mapping(report)

    emit({"sources": reports}, as_json, table)
