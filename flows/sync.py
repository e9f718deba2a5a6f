"""The sync flow: the database sources (all, or those named) read past their watermarks.

One task per source, run one after another, each wrapping :func:`recsys.sources.sync.sync_source`
(which holds the source's lock: a source another sync is reading is reported ``skipped``).
A task is retried only on what may pass on its own: a dropped or refused connection or a
busy database, on the source's side (``SourceError.transient``) or the store's; never on a
configuration error, a missing column or a bad query. One source failing does not stop the
others; the report artifact lists every source, and then the run fails if any source did.
Run it by hand with ``recsys sources sync --flow`` (``python -m flows sync '{...}'``), or on a
cron with ``recsys schedule`` (:mod:`flows.deploy`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from sqlalchemy import Engine

from flows.common import (
    DB_RETRIES,
    DB_RETRY_DELAYS,
    current_run_id,
    settings_and_engine,
    start_prefect_api,
    task_runner,
    transient_database_error,
)
from recsys.errors import RecsysError
from recsys.sources.config import SourceConfig, SourceError, load_sources
from recsys.sources.sync import SyncResult, select_sources, sync_source

# Sources sync one after another: two loads that first meet the same new item or user at
# once collide on PostgreSQL (a unique violation on the second), so the store gets one at a
# time from this flow.
SYNC_WORKERS = 1


def transient_sync_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry condition: a source error that may pass, or a transient error of the store."""
    error = state.result(raise_on_failure=False)
    if isinstance(error, SourceError):
        return error.transient
    return transient_database_error(task, task_run, state)


@task(
    name="sync_source",
    task_run_name="sync-{source.name}",
    retries=DB_RETRIES,
    retry_delay_seconds=DB_RETRY_DELAYS,
    retry_condition_fn=transient_sync_error,
    cache_policy=NO_CACHE,
)
def sync_source_task(
    engine: Engine, source: SourceConfig, rejects_dir: Path, holder: str
) -> SyncResult:
    return sync_source(engine, source, rejects_dir, holder=holder)


def chosen_sources(path: Path, names: list[str] | None) -> list[SourceConfig]:
    """Every source in the sources file, or those ``names`` (each once, in the given order)."""
    sources = load_sources(path)
    if not names:
        return select_sources(sources)
    return [s for name in dict.fromkeys(names) for s in select_sources(sources, name)]


def sync_report(reports: list[dict[str, Any]]) -> str:
    """The run's markdown: one row per source, then the rejects and what was not synced."""
    lines = [
        "# Source sync",
        "",
        "| source | kind | status | read | inserted | already stored | rejected "
        "| watermark before | watermark after | seconds |",
        "|---|---|---|---:|---:|---:|---:|---|---|---:|",
    ]
    for r in reports:
        counts = [r.get(k) for k in ("rows_read", "rows_inserted", "rows_already_stored")]
        cells = [r["source"], r["kind"], r["status"]]
        cells += ["-" if n is None else f"{n:,}" for n in [*counts, r.get("rows_rejected")]]
        cells += [r.get("watermark_before"), r.get("watermark"), r.get("seconds")]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    rejected = [r for r in reports if r.get("rows_rejected")]
    if rejected:
        lines += ["", "## Rejected rows", "", "| source | reason | rows |", "|---|---|---:|"]
        for r in rejected:
            by_reason = sorted(r["rejects_by_reason"].items())
            lines += [f"| {_cell(r['source'])} | {_cell(k)} | {n:,} |" for k, n in by_reason]
        lines += [""] + [f"- {r['source']}: `{r['rejects_file']}`" for r in rejected]
    withdrawn = [r for r in reports if r.get("items_withdrawn")]
    if withdrawn:
        lines += ["", "## Items gone from their source (now unavailable)", ""]
        lines += [f"- {r['source']}: {r['items_withdrawn']:,}" for r in withdrawn]
    others = [r for r in reports if r["status"] != "synced"]
    if others:
        lines += ["", "## Not synced", ""]
        lines += [f"- {r['source']} ({r['status']}): {_cell(r['reason'])}" for r in others]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    return "-" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


@flow(name="sync-sources", task_runner=task_runner(SYNC_WORKERS))
def sync_flow(names: list[str] | None = None) -> dict[str, Any]:
    """Sync every source (or ``names``) into the store; fails at the end if any source failed."""
    settings, engine = settings_and_engine()
    sources = chosen_sources(settings.sources_file, names)  # a bad file fails before any work
    holder = f"sync flow run {current_run_id() or os.getpid()}"
    try:
        futures = [
            sync_source_task.submit(engine, source, settings.rejects_dir, holder)
            for source in sources
        ]
        reports: list[dict[str, Any]] = []
        failed: list[str] = []
        for source, future in zip(sources, futures, strict=True):
            future.wait()
            outcome = future.result(raise_on_failure=False)
            if isinstance(outcome, SyncResult):
                reports.append(outcome.report())
                continue
            text = str(outcome).strip()
            reason = text.splitlines()[0] if text else type(outcome).__name__
            if not reason.startswith(f"source {source.name}:"):
                reason = f"source {source.name}: {reason}"
            reports.append(
                {"source": source.name, "kind": source.kind, "status": "failed", "reason": reason}
            )
            failed.append(source.name)
    finally:
        engine.dispose()
    synced = sum(r["status"] == "synced" for r in reports)
    create_markdown_artifact(
        sync_report(reports),
        key="sync-report",
        description=f"{synced} of {len(reports)} sources synced",
    )
    logger = get_run_logger()
    for r in reports:
        if r["status"] == "synced":
            logger.info(
                "%s: %d read, %d new, %d rejected, watermark %s",
                r["source"],
                r["rows_read"],
                r["rows_inserted"],
                r["rows_rejected"],
                r["watermark"],
            )
    if failed:
        reasons = "; ".join(r["reason"] for r in reports if r["status"] == "failed")
        raise RecsysError(f"{len(failed)} of {len(reports)} sources failed: {reasons}")
    return {"sources": reports}


def run_once(names: list[str] | None = None) -> dict[str, Any]:
    """One sync from the command line (``python -m flows sync``, ``recsys sources sync --flow``)."""
    start_prefect_api()  # one process at a time on a fresh Prefect home
    result: dict[str, Any] = sync_flow(names=names)
    return result
