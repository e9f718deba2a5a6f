"""The ingest flow: an importer read, then a load retried on transient database errors.

``kind`` names an importer of the table the CLI uses too (``movielens``, ``sequences``,
``csv`` with its :class:`~recsys.data.import_kinds.EventFileOptions`). The
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
from recsys.data.import_kinds import EventFileOptions, read_import
from recsys.data.ingest import ingest
from recsys.data.load import LoadResult


@task(name="read", cache_policy=NO_CACHE)
def read_task(path: str, kind: str, options: EventFileOptions | None) -> ImportBatch:
    return read_import(kind, Path(path), options)


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
    path: str, kind: str = "movielens", options: EventFileOptions | None = None
) -> dict[str, Any]:
    """Import one file or folder; bad rows are counted, written to a rejects file and reported.

    ``kind`` is one of :data:`recsys.data.import_kinds.IMPORTERS`; ``options`` are the event
    file's columns and extras (``csv`` only), the same as ``recsys import csv`` takes.
    """
    batch = read_task(path, kind, options)
    result = ingest_task(batch)
    create_markdown_artifact(rejects_report(result), key="ingest-report", description=result.source)
    get_run_logger().info(
        "%s: %d new rows, %d rejected", result.source, result.rows_inserted, result.rows_rejected
    )
    return {k: v for k, v in result.__dict__.items()}
