"""Reading a source's database: its engine, its columns, and its rows past a watermark in chunks.

Every source gets its own engine without a pool (a sync opens one connection and closes it).
Rows are read ``WHERE watermark > low ORDER BY watermark`` and cut into chunks that never
split rows sharing one watermark value, so a chunk's last value is a safe place to resume.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.pool import NullPool

from recsys.sources.config import SourceConfig, SourceError

EXTRAS = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}
# The smallest first chunk of a sync whose chunk_rows is larger (see fetch_sizes).
RAMP_FROM_ROWS = 10_000


@dataclass(frozen=True)
class Chunk:
    """Rows of one chunk as tuples in ``columns`` order; ``first_row`` numbers them (from 1)."""

    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    first_row: int
    last_watermark: Any


def source_engine(source: SourceConfig, env: dict[str, str] | None = None) -> Engine:
    """An engine on the source's database (``${VAR}`` read now), or one line saying why not."""
    url = source.connect_url(env)
    try:
        return sa.create_engine(url, poolclass=NullPool)
    except (ImportError, NoSuchModuleError) as exc:
        backend = sa.engine.make_url(url).get_backend_name()
        extra = EXTRAS.get(backend)
        hint = f" (pip install 'recsys[{extra}]')" if extra else ""
        raise SourceError(
            f"source {source.name}: no driver for {source.shown_url}{hint}: {_first_line(exc)}"
        ) from None
    except ArgumentError:
        raise SourceError(f"source {source.name}: url is not a SQLAlchemy URL") from None


def connect(source: SourceConfig, engine: Engine) -> Connection:
    try:
        return engine.connect()
    except DBAPIError as exc:
        raise SourceError(
            f"source {source.name}: cannot connect to {source.shown_url}: {_reason(exc)}",
            transient=transient(exc),
        ) from None


def from_clause(source: SourceConfig, engine: Engine) -> str:
    """What follows FROM: the quoted table, or the query as a derived table."""
    if source.table is not None:
        quote = engine.dialect.identifier_preparer.quote
        return ".".join(quote(part) for part in source.table.split("."))
    assert source.query is not None
    return f"({source.query.strip().rstrip(';')}) AS recsys_source"


def found_columns(source: SourceConfig, conn: Connection) -> tuple[str, ...]:
    """The columns the table or query yields; a missing mapped column is one line naming it."""
    stmt = _select_all(source, conn.engine)
    columns = tuple(_run(source, conn, stmt.limit(0)).keys())
    for use, name in source.columns().items():
        if name not in columns:
            raise SourceError(
                f"source {source.name}: no column {name!r} for {use}; "
                f"columns are {', '.join(columns)}"
            )
    return columns


def read_chunks(
    source: SourceConfig, conn: Connection, low: Any, *, limit: int | None = None
) -> Iterator[Chunk]:
    """Rows past ``low`` (all when None) in watermark order, up to ``chunk_rows`` at a time.

    The first chunks of a large ``chunk_rows`` are smaller (see :func:`fetch_sizes`), so the
    store starts writing while the bulk of a long sync is still read.
    """
    stmt = read_statement(source, conn.engine, low, limit=limit)
    sizes = fetch_sizes(min(source.chunk_rows, limit) if limit else source.chunk_rows)
    first_size = next(sizes)
    result = _run(source, conn.execution_options(stream_results=True, yield_per=first_size), stmt)
    columns = tuple(result.keys())
    at = columns.index(source.watermark) if source.watermark is not None else None
    pending: list[tuple[Any, ...]] = []
    first = 1
    for fetched, size in _batches(source, conn, result, itertools.chain([first_size], sizes)):
        pending.extend(fetched)
        if len(fetched) < size:
            break
        cut = len(pending) if at is None else _last_group_start(pending, at)
        if cut == 0:
            continue
        yield Chunk(columns, pending[:cut], first, pending[cut - 1][at] if at is not None else None)
        first += cut
        pending = pending[cut:]
    if pending:
        yield Chunk(columns, pending, first, pending[-1][at] if at is not None else None)


def fetch_sizes(chunk_rows: int) -> Iterator[int]:
    """Rows to fetch for each chunk: from an eighth of ``chunk_rows`` (at least
    ``RAMP_FROM_ROWS``), doubling up to ``chunk_rows``, then ``chunk_rows`` on.

    Nothing is written until the first chunk is read, mapped and its ids resolved: a full
    first chunk of 100,000 rows kept the store idle for a fifth of a 1M-row sync.
    """
    size = min(chunk_rows, max(RAMP_FROM_ROWS, chunk_rows // 8))
    while size < chunk_rows:
        yield size
        size *= 2
    yield from itertools.repeat(chunk_rows)


def _batches(
    source: SourceConfig, conn: Connection, result: sa.CursorResult[Any], sizes: Iterator[int]
) -> Iterator[tuple[Sequence[tuple[Any, ...]], int]]:
    """The result's rows as the driver's tuples, each batch with the size asked for, until a
    batch comes back short.

    The first batch comes through SQLAlchemy, which hands back the row it read ahead (a
    server-side cursor's first row, read for the column names) with the others; the rest
    come from the DB-API cursor itself, since a Row object per row cost as much as the
    driver's fetch. The statement has no typed columns, so SQLAlchemy would convert nothing.
    """
    errors = (SQLAlchemyError, conn.dialect.loaded_dbapi.Error)
    try:
        try:
            size = next(sizes)
            fetched: Sequence[Any] = result.fetchmany(size)
            while fetched:
                if type(fetched[0]) is not tuple:
                    fetched = [tuple(r) for r in fetched]
                yield fetched, size
                cursor = result.cursor
                if cursor is None or len(fetched) < size:
                    return
                size = next(sizes)
                fetched = cursor.fetchmany(size)
        except errors as exc:
            wrapped = (
                exc
                if isinstance(exc, SQLAlchemyError)
                else DBAPIError.instance(None, None, exc, conn.dialect.loaded_dbapi.Error)
            )
            raise SourceError(
                f"source {source.name}: reading failed: {_reason(exc)}",
                transient=transient(wrapped),
            ) from None
    finally:
        result.close()


def read_statement(
    source: SourceConfig, engine: Engine, low: Any, *, limit: int | None = None
) -> sa.Select[Any]:
    """The SELECT :func:`read_chunks` runs: ``watermark > :low ORDER BY watermark``.

    The watermark column should be indexed in the source: the index then serves both the
    filter and the order, and a sync reads only the new rows.
    """
    stmt = _select_all(source, engine)
    if source.watermark is not None:
        column: sa.ColumnElement[Any] = sa.literal_column(
            engine.dialect.identifier_preparer.quote(source.watermark)
        )
        stmt = stmt.where(column.is_not(None))
        if low is not None:
            stmt = stmt.where(column > sa.bindparam("low", low))
        stmt = stmt.order_by(column)
    if limit is not None:
        stmt = stmt.limit(limit)
    return stmt


def _select_all(source: SourceConfig, engine: Engine) -> sa.Select[Any]:
    star: sa.ColumnElement[Any] = sa.literal_column("*")
    return sa.select(star).select_from(sa.text(from_clause(source, engine)))


def _last_group_start(rows: Sequence[tuple[Any, ...]], at: int) -> int:
    """Where the run of rows sharing the last row's watermark value starts."""
    last = rows[-1][at]
    cut = len(rows)
    while cut > 0 and rows[cut - 1][at] == last:
        cut -= 1
    return cut


def _run(source: SourceConfig, conn: Connection, stmt: sa.Select[Any]) -> sa.CursorResult[Any]:
    try:
        return conn.execute(stmt)
    except SQLAlchemyError as exc:
        raise SourceError(
            f"source {source.name}: the query failed: {_reason(exc)}", transient=transient(exc)
        ) from None


# Refused logins and unknown databases come as OperationalError too, but do not pass on their
# own: PostgreSQL's SQLSTATE classes 28 and 3D, MySQL's access-denied and unknown-database codes.
_LASTING_SQLSTATE = ("28", "3D")
_LASTING_MYSQL = {1044, 1045, 1049}


def transient(exc: Exception) -> bool:
    """Whether a driver error may pass on its own: a dropped or refused connection, a busy or
    locked database. A bad query, a missing table or a refused login is not (SQLite reports
    those as OperationalError too, so there only "locked" and "busy" count)."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if not isinstance(exc, OperationalError | InterfaceError):
        return False
    orig = exc.orig
    if type(orig).__module__.startswith("sqlite3"):
        text = str(orig).lower()
        return "locked" in text or "busy" in text
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate.startswith(_LASTING_SQLSTATE):
        return False
    code = orig.args[0] if orig is not None and orig.args else None
    return not (isinstance(code, int) and code in _LASTING_MYSQL)


def _reason(exc: Exception) -> str:
    orig = getattr(exc, "orig", None)
    return _first_line(orig if orig is not None else exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
