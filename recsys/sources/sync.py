"""``check`` a source against its live database and ``sync`` its new rows into the store.

A sync reads the rows past the source's watermark (less its look-back) in chunks; each chunk
is mapped and loaded like a file import (one transaction, stored rows skipped), and only then
does the watermark move, in a transaction of its own. A crash between the two makes the next
sync re-read that chunk, whose rows are then counted as already stored. The chunks go
through the threads of :mod:`recsys.sources.pipeline`.

One sync of a source runs at a time, wherever it was started (the CLI, a flow, another
machine): it holds the lock ``source:NAME`` in the store (:mod:`recsys.db.locks`), renewed
after every chunk, and a sync started meanwhile returns at once as ``skipped``, naming the
holder. Different sources sync concurrently.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from recsys.data.load import refresh_statistics
from recsys.data.store_ids import KnownIds
from recsys.db import locks
from recsys.db.catalogue import withdraw_absent
from recsys.db.migrate import require_current
from recsys.db.schema import items_table, users_table
from recsys.sources.config import SourceConfig, SourceConfigError
from recsys.sources.mapping import map_chunk
from recsys.sources.pipeline import AfterLoad, Run, collector_paused, pipeline
from recsys.sources.pipeline import loaders as pipeline_loaders
from recsys.sources.reader import connect, found_columns, read_chunks, source_engine
from recsys.sources.watermarks import encode, lower_bound, read_watermark

logger = logging.getLogger(__name__)

# A sync that makes no progress (no chunk stored) for this long loses its lock: a sync that
# died holds its source up to this long.
LOCK_TTL = timedelta(minutes=15)
LOCK_NAME_LENGTH = 64  # the locks table's name column


@dataclass(frozen=True)
class SourceCheck:
    """What ``check`` found: the columns, and how a sample of the rows maps."""

    name: str
    kind: str
    url: str
    columns: tuple[str, ...]
    mapped: dict[str, str]
    sample_rows: int
    sample_mapped: int
    sample_rejected: int
    rejects_by_reason: dict[str, int]
    watermark: str | None

    def report(self) -> dict[str, Any]:
        return {
            "source": self.name,
            "kind": self.kind,
            "url": self.url,
            "columns": ", ".join(self.columns),
            "mapped": self.mapped,
            "sample_rows": self.sample_rows,
            "sample_mapped": self.sample_mapped,
            "sample_rejected": self.sample_rejected,
            "rejects_by_reason": self.rejects_by_reason,
            "watermark": self.watermark,
        }


@dataclass(frozen=True)
class SyncResult:
    """What one sync of one source did; every row read is inserted, already stored or rejected.

    For item and user sources, ``rows_inserted`` counts new ids and ``rows_already_stored``
    ids the store had (their attributes refreshed). ``items_withdrawn`` counts the items an
    item source described before and no longer returns, now unavailable.
    """

    name: str
    kind: str
    rows_read: int
    rows_inserted: int
    rows_already_stored: int
    rows_rejected: int
    rejects_by_reason: dict[str, int]
    rejects_file: str | None
    watermark_before: str | None
    watermark: str | None
    chunks: int
    seconds: float
    import_ids: list[int] = field(default_factory=list)
    items_withdrawn: int = 0
    status: str = "synced"  # or "skipped": another sync of the source was running
    reason: str | None = None  # why it was skipped

    def report(self) -> dict[str, Any]:
        return {
            "source": self.name,
            "kind": self.kind,
            "status": self.status,
            **({"reason": self.reason} if self.reason else {}),
            "rows_read": self.rows_read,
            "rows_inserted": self.rows_inserted,
            "rows_already_stored": self.rows_already_stored,
            "rows_rejected": self.rows_rejected,
            "rejects_by_reason": self.rejects_by_reason,
            "rejects_file": self.rejects_file,
            "watermark_before": self.watermark_before,
            "watermark": self.watermark,
            "chunks": self.chunks,
            "items_withdrawn": self.items_withdrawn,
            "seconds": round(self.seconds, 3),
        }


def select_sources(
    sources: Mapping[str, SourceConfig], name: str | None = None
) -> list[SourceConfig]:
    """Every source, or the one named (an unknown name is one line listing the known ones)."""
    if name is None:
        return list(sources.values())
    if name not in sources:
        raise SourceConfigError(f"no source named {name!r}; sources are {', '.join(sources)}")
    return [sources[name]]


def check_source(
    source: SourceConfig, store: Engine | None = None, env: dict[str, str] | None = None
) -> SourceCheck:
    """Connect, find the columns, and map the first ``sample_rows`` rows; nothing is written."""
    engine = source_engine(source, env)
    try:
        with connect(source, engine) as conn:
            columns = found_columns(source, conn)
            chunks = list(read_chunks(source, conn, None, limit=source.sample_rows))
    finally:
        engine.dispose()
    read = mapped = 0
    reasons: Counter[str] = Counter()
    for chunk in chunks:
        batch = map_chunk(source, chunk)
        rejects = batch.all_rejects
        read += len(chunk.rows)
        mapped += len(chunk.rows) - len(rejects)
        reasons.update(r.reason for r in rejects)
    stored = None
    if store is not None and source.watermark is not None:
        value = read_watermark(store, source.name, source.watermark)
        stored = None if value is None else encode(value)[0]
    return SourceCheck(
        name=source.name,
        kind=source.kind,
        url=source.shown_url,
        columns=columns,
        mapped=source.columns(),
        sample_rows=read,
        sample_mapped=mapped,
        sample_rejected=read - mapped,
        rejects_by_reason=dict(sorted(reasons.items())),
        watermark=stored,
    )


def lock_name(name: str) -> str:
    """The lock one sync of source ``name`` holds: ``source:NAME`` (a long name is hashed)."""
    full = f"source:{name}"
    if len(full) <= LOCK_NAME_LENGTH:
        return full
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    return f"{full[: LOCK_NAME_LENGTH - len(digest) - 1]}~{digest}"


def sync_source(
    store: Engine,
    source: SourceConfig,
    rejects_dir: Path,
    *,
    env: dict[str, str] | None = None,
    after_load: AfterLoad | None = None,
    holder: str | None = None,
) -> SyncResult:
    """Read the source's new rows into the store; the watermark moves after each chunk.

    Under the source's lock, held as ``holder`` (default: this process and machine); if
    another sync holds it, nothing is read and the result is ``skipped`` with the holder.
    """
    require_current(store)
    started = time.perf_counter()
    name = lock_name(source.name)
    holder = (holder or f"sync process {os.getpid()} on {socket.gethostname()}")[:255]
    try:
        locks.acquire(store, name, holder=holder, ttl=LOCK_TTL)
    except locks.LockHeldError as exc:
        return _skipped(store, source, str(exc), time.perf_counter() - started)

    def renew() -> None:
        locks.renew(store, name, holder=holder, ttl=LOCK_TTL)

    try:
        return _sync_locked(store, source, rejects_dir, env, after_load, renew, started)
    finally:
        try:
            locks.release(store, name, holder=holder)
        except SQLAlchemyError as exc:  # the store is gone: the lock runs out by itself
            logger.warning("source %s: lock not released (%s); it expires", source.name, exc)


def _sync_locked(
    store: Engine,
    source: SourceConfig,
    rejects_dir: Path,
    env: dict[str, str] | None,
    after_load: AfterLoad | None,
    renew: Callable[[], None],
    started: float,
) -> SyncResult:
    before = None
    if source.watermark is not None:
        before = read_watermark(store, source.name, source.watermark)
    low = None if before is None else lower_bound(before, source.lookback)
    catalogue = {"items": items_table, "users": users_table}.get(source.kind)
    run = Run(
        store,
        source,
        rejects_dir,
        after_load,
        renew,
        watermark=before,
        known=_count(store, catalogue) if catalogue is not None else 0,
        present=set() if source.withdraws_absent else None,
    )
    known_ids = KnownIds()  # the chunks share most of their users and items
    loaders = pipeline_loaders(store, source)
    engine = source_engine(source, env)
    try:
        with ExitStack() as stack:
            conn = stack.enter_context(connect(source, engine))
            stack.enter_context(collector_paused())
            found_columns(source, conn)
            ready = stack.enter_context(pipeline(store, source, conn, low, known_ids))
            pool = stack.enter_context(
                ThreadPoolExecutor(loaders, thread_name_prefix="recsys-source-load")
            )
            run.load(ready, pool, loaders, known_ids)
    finally:
        engine.dispose()
    totals = run.totals
    if catalogue is None:
        refresh_statistics(store, totals["inserted"])
    withdrawn = _withdraw(store, source, run.present, totals["read"])
    watermark = run.watermark
    return SyncResult(
        name=source.name,
        kind=source.kind,
        rows_read=totals["read"],
        rows_inserted=totals["inserted"],
        rows_already_stored=totals["skipped"],
        rows_rejected=totals["rejected"],
        rejects_by_reason=dict(sorted(run.reasons.items())),
        rejects_file=None if run.report is None else str(run.report),
        watermark_before=None if before is None else encode(before)[0],
        watermark=None if watermark is None else encode(watermark)[0],
        chunks=len(run.import_ids),
        seconds=time.perf_counter() - started,
        import_ids=run.import_ids,
        items_withdrawn=withdrawn,
    )


def _withdraw(store: Engine, source: SourceConfig, present: set[str] | None, read: int) -> int:
    """After a complete read, make unavailable the source's items it no longer returns."""
    if present is None:
        return 0
    if read == 0:
        # An empty read is more often a broken query than an empty shop: nothing changes.
        logger.warning("source %s returned no rows: item availability left as it was", source.name)
        return 0
    with store.begin() as conn:
        gone = withdraw_absent(conn, source.name, present)
    if gone:
        logger.info(
            "source %s: %d items no longer returned, now unavailable", source.name, len(gone)
        )
    return len(gone)


def _skipped(store: Engine, source: SourceConfig, reason: str, seconds: float) -> SyncResult:
    stored = None
    if source.watermark is not None:
        value = read_watermark(store, source.name, source.watermark)
        stored = None if value is None else encode(value)[0]
    return SyncResult(
        name=source.name,
        kind=source.kind,
        rows_read=0,
        rows_inserted=0,
        rows_already_stored=0,
        rows_rejected=0,
        rejects_by_reason={},
        rejects_file=None,
        watermark_before=stored,
        watermark=stored,
        chunks=0,
        seconds=seconds,
        status="skipped",
        reason=reason,
    )


def _count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())
