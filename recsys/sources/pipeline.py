"""The moving parts of a source sync: chunks read, mapped, prepared and written by threads.

:func:`pipeline` overlaps the stages, each a chunk ahead of the next: a thread reads and maps
chunks, a second resolves their users' and items' keys (committed apart) and orders the
rows, and a pool writes them (:func:`loaders` at once). :class:`Run` submits each chunk,
settles chunks in the source's order and moves the watermark past a chunk only when it and
every chunk before it committed. :mod:`recsys.sources.sync` holds the lock, reads the
watermark and reports.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from sqlalchemy import Connection, Engine

from recsys.data.frames import ImportBatch, Reject
from recsys.data.ingest import append_rejects, rejects_path
from recsys.data.load import EventRows, LoadResult, load_batch, prepare_events
from recsys.data.readers import id_text
from recsys.data.store_ids import KnownIds
from recsys.sources.config import SourceConfig
from recsys.sources.mapping import map_chunk
from recsys.sources.reader import Chunk, read_chunks
from recsys.sources.watermarks import later, write_watermark

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

# Called with the chunk's number after its rows are committed, before the watermark moves.
AfterLoad = Callable[[int], None]


def loaders(store: Engine, source: SourceConfig) -> int:
    """How many chunks load at once: two into PostgreSQL, whose server writes each chunk's
    events on a core of its own (the store's index upkeep is most of a sync's time); one into
    SQLite (one writer at a time) and for item and user sources (each chunk's counts follow
    the chunk before)."""
    return 2 if source.kind == "events" and store.dialect.name == "postgresql" else 1


@dataclass
class Loading:
    """A chunk whose events are being written."""

    number: int
    rows: int
    rejects: list[Reject]
    last_watermark: Any
    future: Future[LoadResult]


@dataclass
class Run:
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
    pending: deque[Loading] = field(default_factory=deque)  # oldest first
    failed: bool = False  # a chunk failed to settle: the watermark moves no further

    def load(
        self, ready: Iterator[Prepared], pool: ThreadPoolExecutor, at_once: int, known: KnownIds
    ) -> None:
        """Have every chunk written, ``at_once`` at a time plus one waiting its turn."""
        try:
            for number, (chunk, batch, rows) in enumerate(ready, start=1):
                self.pending.append(self._submit(pool, number, chunk, batch, rows, known))
                del chunk, batch, rows
                if len(self.pending) > at_once:
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
    ) -> Loading:
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
        return Loading(number, len(chunk.rows), rejects, chunk.last_watermark, future)

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

    def _settle(self, loading: Loading) -> None:
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


Prepared = tuple[Chunk, ImportBatch, EventRows | None]


@contextmanager
def pipeline(
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
    with read_ahead(mapped) as ahead:
        keyed = ((c, b, prepare_events(store, b, known)) for c, b in ahead)
        with read_ahead(keyed) as ready:
            yield ready


_DONE = object()


@contextmanager
def read_ahead(items: Iterator[_T]) -> Iterator[Iterator[_T]]:
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
def collector_paused() -> Iterator[None]:
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
