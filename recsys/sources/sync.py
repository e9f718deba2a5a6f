"""``check`` a source against its live database and ``sync`` its new rows into the store.

A sync reads the rows past the source's watermark (less its look-back) in chunks; each chunk
is mapped and loaded like a file import (one transaction, stored rows skipped), and only then
does the watermark move, in a transaction of its own. A crash between the two makes the next
sync re-read that chunk, whose rows are then counted as already stored.

One sync of a source runs at a time, wherever it was started (the CLI, a flow, another
machine): it holds the lock ``source:NAME`` in the store (:mod:`recsys.db.locks`), renewed
after every chunk, and a sync started meanwhile returns at once as ``skipped``, naming the
holder. Different sources sync concurrently.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import queue
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from recsys.data.frames import ImportBatch, Reject
from recsys.data.ingest import append_rejects, rejects_path
from recsys.data.load import EventRows, LoadResult, load_batch, prepare_events, refresh_statistics
from recsys.data.readers import id_text
from recsys.data.store_ids import KnownIds
from recsys.db import locks
from recsys.db.catalogue import withdraw_absent
from recsys.db.migrate import require_current
from recsys.db.schema import items_table, users_table
from recsys.sources.config import SourceConfig, SourceConfigError
from recsys.sources.mapping import map_chunk
from recsys.sources.reader import Chunk, connect, found_columns, read_chunks, source_engine
from recsys.sources.watermarks import (
    encode,
    later,
    lower_bound,
    read_watermark,
    write_watermark,
)

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

# Called with the chunk's number after its rows are committed, before the watermark moves.
AfterLoad = Callable[[int], None]
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
    run = _Run(
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
    loaders = _loaders(store, source)
    engine = source_engine(source, env)
    try:
        with ExitStack() as stack:
            conn = stack.enter_context(connect(source, engine))
            stack.enter_context(_collector_paused())
            found_columns(source, conn)
            ready = stack.enter_context(_pipeline(store, source, conn, low, known_ids))
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


def _loaders(store: Engine, source: SourceConfig) -> int:
    """How many chunks load at once: two into PostgreSQL, whose server writes each chunk's
    events on a core of its own (the store's index upkeep is most of a sync's time); one into
    SQLite (one writer at a time) and for item and user sources (each chunk's counts follow
    the chunk before)."""
    return 2 if source.kind == "events" and store.dialect.name == "postgresql" else 1


@dataclass
class _Loading:
    """A chunk whose events are being written."""

    number: int
    rows: int
    rejects: list[Reject]
    last_watermark: Any
    future: Future[LoadResult]


@dataclass
class _Run:
    """One sync's chunks on their way to the store, and its counts and watermark.

    Chunks are submitted in the source's order and may commit out of order (two load at once
    into PostgreSQL); the watermark moves past a chunk only once it and every chunk before it
    are committed, so a sync stopped anywhere re-reads whatever might be missing, and the
    rows it finds stored are counted as already stored.
    """

    store: Engine
    source: SourceConfig
    rejects_dir: Path
    after_load: AfterLoad | None
    renew: Callable[[], None]
    watermark: Any
    known: int  # item or user sources: the catalogue's size so far
    present: set[str] | None  # item sources that withdraw absent items: every id read
    report: Path | None = None  # the rejects file, once a row is rejected
    totals: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    import_ids: list[int] = field(default_factory=list)
    pending: deque[_Loading] = field(default_factory=deque)  # oldest first
    failed: bool = False  # a chunk failed to settle: the watermark moves no further

    def load(
        self, ready: Iterator[Prepared], pool: ThreadPoolExecutor, loaders: int, known: KnownIds
    ) -> None:
        """Have every chunk written, ``loaders`` at a time plus one waiting its turn."""
        try:
            for number, (chunk, batch, rows) in enumerate(ready, start=1):
                self.pending.append(self._submit(pool, number, chunk, batch, rows, known))
                del chunk, batch, rows
                if len(self.pending) > loaders:
                    self.settle_oldest()
            while self.pending:
                self.settle_oldest()
        except BaseException:
            self.wind_down()
            raise

    def _submit(
        self,
        pool: ThreadPoolExecutor,
        number: int,
        chunk: Chunk,
        batch: ImportBatch,
        rows: EventRows | None,
        known: KnownIds,
    ) -> _Loading:
        if self.present is not None:
            self.present.update(item_ids(self.source, chunk))
        rejects = batch.all_rejects
        if rejects:
            self.report = self.report or rejects_path(
                self.rejects_dir, f"source-{self.source.name}"
            )
            append_rejects(self.report, rejects)
        future = pool.submit(
            load_batch,
            self.store,
            batch,
            None if self.report is None else str(self.report),
            known=None if rows is not None else known,  # the preparing thread's, until then
            prepared=rows,
            analyze=False,  # once, after the last chunk
        )
        return _Loading(number, len(chunk.rows), rejects, chunk.last_watermark, future)

    def settle_oldest(self) -> None:
        """Wait for the oldest chunk in flight, count it, move the watermark past it."""
        try:
            self._settle(self.pending.popleft())
        except BaseException:
            self.failed = True
            raise

    def wind_down(self) -> None:
        """After an error: chunks waiting their turn are dropped; those already loading finish
        and, unless a chunk before them failed, count and move the watermark."""
        for loading in self.pending:
            loading.future.cancel()
        while self.pending and not self.failed:
            if self.pending[0].future.cancelled():
                break
            try:
                self.settle_oldest()
            except Exception as exc:  # the error being raised already says what went wrong
                logger.warning("source %s: a chunk in flight failed too: %s", self.source.name, exc)
        self.pending.clear()

    def _settle(self, loading: _Loading) -> None:
        loaded = loading.future.result()
        source, totals = self.source, self.totals
        self.import_ids.append(loaded.import_id)
        totals["read"] += loading.rows
        totals["rejected"] += len(loading.rejects)
        self.reasons.update(r.reason for r in loading.rejects)
        if source.kind == "events":
            totals["inserted"] += loaded.rows_inserted
            totals["skipped"] += loaded.rows_skipped
        else:
            total = loaded.items_total if source.kind == "items" else loaded.users_total
            totals["inserted"] += total - self.known
            totals["skipped"] += loading.rows - len(loading.rejects) - (total - self.known)
            self.known = total
        if self.after_load is not None:
            self.after_load(loading.number)
        if source.watermark is not None:
            self.watermark = later(self.watermark, loading.last_watermark)
            write_watermark(self.store, source.name, source.watermark, self.watermark)
        self.renew()
        logger.info(
            "source %s: chunk %d stored, watermark %s", source.name, loading.number, self.watermark
        )
        gc.collect(1)


def item_ids(source: SourceConfig, chunk: Chunk) -> pd.Series:
    """The item ids of every row of a chunk, as the store keeps them (rejected rows too: an
    item whose row cannot be stored still exists in its source)."""
    assert source.items is not None
    at = chunk.columns.index(source.items.id)
    return id_text(pd.Series([row[at] for row in chunk.rows], dtype=object))


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


Prepared = tuple[Chunk, ImportBatch, EventRows | None]


@contextmanager
def _pipeline(
    store: Engine, source: SourceConfig, conn: Connection, low: Any, known: KnownIds
) -> Iterator[Iterator[Prepared]]:
    """The source's chunks from ``low`` on, mapped, and their events prepared to write.

    The stages overlap, each a chunk ahead of the next: a thread reads and maps chunks, a
    second resolves (and commits) the keys of their users and items and orders the rows, and
    the caller has them written. A sync's time is mostly the store writing events; the next
    chunks are read and prepared meanwhile. ``known`` belongs to the second thread while the
    pipeline runs.
    """
    mapped = ((c, map_chunk(source, c)) for c in read_chunks(source, conn, low))
    with _read_ahead(mapped) as ahead:
        keyed = ((c, b, prepare_events(store, b, known)) for c, b in ahead)
        with _read_ahead(keyed) as ready:
            yield ready


_DONE = object()


@contextmanager
def _read_ahead(items: Iterator[_T]) -> Iterator[Iterator[_T]]:
    """``items`` made one ahead in a thread: the next chunk is read and mapped while the
    current one loads (each waits on a database half of the time).

    An error in the thread is raised where its item would have come, after the items before
    it were used; leaving the block stops the thread once its current item is made.
    """
    slot: queue.Queue[tuple[Any, BaseException | None]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def hand_over(item: Any, error: BaseException | None = None) -> bool:
        while not stop.is_set():
            try:
                slot.put((item, error), timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def make() -> None:
        try:
            for item in items:
                if not hand_over(item):
                    return
            hand_over(_DONE)
        except BaseException as exc:
            hand_over(_DONE, exc)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    def take() -> Iterator[_T]:
        while True:
            item, error = slot.get()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item

    thread = threading.Thread(target=make, name="recsys-source-read-ahead", daemon=True)
    thread.start()
    try:
        yield take()
    finally:
        stop.set()
        while thread.is_alive():
            with suppress(queue.Empty):
                slot.get(timeout=0.05)
        thread.join()


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector off during a sync; the loop runs it on the young objects.

    A chunk allocates several objects per row (its tuples, their values, the frames), and
    the automatic collections this triggers walked every live object again and again: a
    quarter of a sync's own time. The chunk's objects go by reference counting anyway.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())
