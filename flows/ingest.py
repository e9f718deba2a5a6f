"""The ingest flow: an importer read, then a load retried on transient database errors.

``kind`` is ``movielens``, ``sequences`` or ``csv`` (with ``user_col``/``item_col``...). The
rejects report (counts per reason and the rejects file) is published as a Prefect artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import DB_RETRIES, DB_RETRY_DELAYS, settings_and_engine, transient_database_error
from recsys.data.frames import ImportBatch
from recsys.data.importers import CsvColumns, import_events, import_movielens, import_sequences
from recsys.data.ingest import ingest
from recsys.db.load import LoadResult
from recsys.errors import RecsysError

KINDS = ("movielens", "sequences", "csv")


@task(name="read", cache_policy=NO_CACHE)
def read_task(path: str, kind: str, columns: dict[str, str | None]) -> ImportBatch:
    if kind == "movielens":
        return import_movielens(Path(path))
    if kind == "sequences":
        return import_sequences(Path(path))
    if kind == "csv":
        user_col, item_col = columns.get("user_col"), columns.get("item_col")
        if not user_col or not item_col:
            raise RecsysError("csv imports need user_col and item_col")
        return import_events(
            Path(path),
            CsvColumns(user_col, item_col, columns.get("time_col"), columns.get("rating_col")),
        )
    raise RecsysError(f"unknown kind {kind!r}; choose from: {', '.join(KINDS)}")


@task(
    name="ingest",
    retries=DB_RETRIES,
    retry_delay_seconds=DB_RETRY_DELAYS,
    retry_condition_fn=transient_database_error,
    cache_policy=NO_CACHE,
)
def ingest_task(batch: ImportBatch) -> LoadResult:
    settings, engine = settings_and_engine()
    return ingest(engine, batch, settings.rejects_dir)


def rejects_report(result: LoadResult) -> str:
    lines = [
        f"# Import of {result.source}",
        "",
        f"- read {result.rows_read:,}, inserted {result.rows_inserted:,}, already stored "
        f"{result.rows_skipped:,}, rejected {result.rows_rejected:,}",
        f"- rejects file: `{result.rejects_path or '-'}`",
        "",
    ]
    if result.rejects_by_reason:
        lines += ["| reason | rows |", "|---|---:|"]
        lines += [f"| {reason} | {n:,} |" for reason, n in sorted(result.rejects_by_reason.items())]
    if result.catalogue_rejected:
        lines += ["", f"Item and user files: {result.catalogue_rejected:,} rows rejected", ""]
        lines += ["| reason | rows |", "|---|---:|"]
        by_reason = sorted(result.catalogue_rejects_by_reason.items())
        lines += [f"| {reason} | {n:,} |" for reason, n in by_reason]
    return "\n".join(lines) + "\n"


@flow(name="ingest")
def ingest_flow(
    path: str,
    kind: str = "movielens",
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
    rating_col: str | None = None,
) -> dict[str, Any]:
    """Import one file or folder; bad rows are counted, written to a rejects file and reported."""
    columns = {
        "user_col": user_col,
        "item_col": item_col,
        "time_col": time_col,
        "rating_col": rating_col,
    }
    batch = read_task(path, kind, columns)
    result = ingest_task(batch)
    create_markdown_artifact(rejects_report(result), key="ingest-report", description=result.source)
    get_run_logger().info(
        "%s: %d new rows, %d rejected", result.source, result.rows_inserted, result.rows_rejected
    )
    return {k: v for k, v in result.__dict__.items()}
