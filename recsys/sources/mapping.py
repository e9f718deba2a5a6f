"""Rows of a source mapped to an :class:`ImportBatch` through the file importers' builders.

Events go through :func:`recsys.data.readers.build_events` and items and users through
:func:`recsys.data.readers.build_catalogue`, so a row is checked and rejected for the same
reasons as a line of a file. A reject names the source as its file, the row's position in
this read as its line, and the row's mapped columns as JSON as its raw text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, date, datetime, time
from decimal import Decimal
from operator import itemgetter
from typing import Any, overload
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from recsys.data.frames import ImportBatch, empty_items, empty_users
from recsys.data.readers import build_catalogue, build_events
from recsys.db.schema import items_table, users_table
from recsys.sources.config import EventColumns, ItemColumns, SourceConfig, UserColumns
from recsys.sources.reader import Chunk

KIND = "source"
_TRUE = frozenset({"1", "t", "true", "y", "yes", "on"})
_FALSE = frozenset({"0", "f", "false", "n", "no", "off"})


def map_chunk(source: SourceConfig, chunk: Chunk) -> ImportBatch:
    """The batch one chunk of rows becomes (nothing is written)."""
    used = list(dict.fromkeys(source.mapping.used().values()))
    raw = RawRows(chunk, used)
    lines = np.arange(chunk.first_row, chunk.first_row + len(chunk.rows), dtype=np.int64)
    if source.events is not None:
        return _events_batch(source, source.events, chunk, lines, raw)
    frame = pd.DataFrame(chunk.rows, columns=list(chunk.columns), dtype=object)
    if source.items is not None:
        items, rejects = build_catalogue(
            item_frame(frame, source.items, source.name),
            items_table,
            "item_id",
            file=source.name,
            lines=lines.tolist(),
            raw=raw,
        )
        return ImportBatch(
            kind=KIND,
            source=source.name,
            items=items,
            users=empty_users(),
            catalogue_rejects=rejects,
        )
    assert source.users is not None
    users, rejects = build_catalogue(
        user_frame(frame, source.users),
        users_table,
        "user_id",
        file=source.name,
        lines=lines.tolist(),
        raw=raw,
    )
    return ImportBatch(
        kind=KIND, source=source.name, users=users, items=empty_items(), catalogue_rejects=rejects
    )


class RawRows(Sequence[str]):
    """Each row's mapped columns as JSON, a reject's raw text, made only for the rows asked.

    Building it for every row cost more than the rest of the mapping; a chunk has few rejects.
    """

    def __init__(self, chunk: Chunk, names: list[str]) -> None:
        self._rows = chunk.rows
        self._names = names
        self._at = [chunk.columns.index(n) for n in names]

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        row = self._rows[index]
        return json.dumps(
            dict(zip(self._names, (row[at] for at in self._at), strict=True)), default=str
        )


def _events_batch(
    source: SourceConfig, spec: EventColumns, chunk: Chunk, lines: np.ndarray, raw: RawRows
) -> ImportBatch:
    """Events from the mapped columns only, each taken straight from the rows' tuples."""

    def column(name: str) -> pd.Series:
        # The first column of that name (a query may repeat one); only the mapped columns are
        # taken out of the rows (transposing every row with zip(*rows) cost twice as much).
        return pd.Series(list(map(itemgetter(chunk.columns.index(name)), chunk.rows)), dtype=object)

    events, rejects = build_events(
        file=source.name,
        users=column(spec.user),
        items=column(spec.item),
        times=time_texts(column(spec.time), ZoneInfo(spec.time_zone)),
        values=column(spec.value) if spec.value else None,
        event_types=column(spec.event_type_column) if spec.event_type_column else spec.event_type,
        lines=lines,
        raw=raw,
        time_unit=spec.time_unit,
    )
    return ImportBatch(
        kind=KIND,
        source=source.name,
        interactions=events,
        rejects=rejects,
        rows_read=len(chunk.rows),
    )


def time_texts(values: pd.Series, zone: ZoneInfo) -> pd.Series:
    """Times as :func:`build_events` reads them: ISO 8601 text with an offset, epoch numbers,
    or (for a column of times without an offset, the usual ``TIMESTAMP``) UTC datetimes.

    A time without an offset (a ``DATETIME`` column, or ISO text from SQLite) is read in
    ``zone``; anything else is left as text for the builder to judge. A column holding only
    naive datetimes (and NULLs) is converted at once, unless a time falls in a daylight-saving
    fold or gap of ``zone``: those, like every other column, go row by row.
    """
    kinds = set(map(type, values))
    if kinds <= _NUMBERS:
        return values  # epoch numbers, as the builder reads them
    if kinds <= {datetime, type(None)}:
        stamps = _naive_times(values, zone)
        if stamps is not None:
            return stamps
    return pd.Series([_time_text(v, zone) for v in values], dtype=object)


_NUMBERS = frozenset({int, float, Decimal, type(None)})


# Times outside these go row by row: near year 1 or 9999 a zone's offset leaves the range
# of the text path's parser, which then rejects the row for another reason.
_ORDINARY = (pd.Timestamp("1900-01-01"), pd.Timestamp("2200-01-01"))


def _naive_times(values: pd.Series, zone: ZoneInfo) -> pd.Series | None:
    """Naive datetimes read in ``zone`` as UTC; None when any is aware, ambiguous in ``zone``
    or far from now."""
    try:
        stamps = pd.to_datetime(values)
        if stamps.dt.tz is not None:
            return None
        if not _ORDINARY[0] <= stamps.min() <= stamps.max() <= _ORDINARY[1]:
            return None  # (an all-NULL column too: NaT compares false)
        localized = stamps.dt.tz_localize(zone, ambiguous="raise", nonexistent="raise")
    except (ValueError, TypeError, OverflowError):
        return None
    return localized.dt.tz_convert(UTC)


def _time_text(value: Any, zone: ZoneInfo) -> Any:
    if value is None or isinstance(value, int | float | Decimal):
        return value
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            return value
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time())
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=zone)
        return value.isoformat()
    return str(value)


def item_frame(frame: pd.DataFrame, spec: ItemColumns, source: str) -> pd.DataFrame:
    out: dict[str, Any] = {"item_id": frame[spec.id].tolist()}
    out["title"] = _column(frame, spec.title, _text)
    out["genres"] = (
        [_genres(v, spec.genres_separator) for v in frame[spec.genres]] if spec.genres else None
    )
    out["year"] = _column(frame, spec.year, _integer)
    out["price"] = _column(frame, spec.price, _number)
    out["attributes"] = _attributes(frame, spec.attributes)
    out["available"] = availability(frame, spec)
    out["source"] = source
    return pd.DataFrame(out)


def availability(frame: pd.DataFrame, spec: ItemColumns) -> list[bool]:
    """Whether each row's item may be recommended: a row the source returns is available
    unless its ``available`` column is false or its ``deleted`` column is set (an
    unreadable availability counts as available; ``sources check`` shows the values)."""
    flags = _column(frame, spec.available, _flag) or [None] * len(frame)
    gone = _column(frame, spec.deleted, _deleted) or [False] * len(frame)
    return [flag is not False and not dead for flag, dead in zip(flags, gone, strict=True)]


def user_frame(frame: pd.DataFrame, spec: UserColumns) -> pd.DataFrame:
    out: dict[str, Any] = {"user_id": frame[spec.id].tolist()}
    out["age"] = _column(frame, spec.age, _integer)
    out["gender"] = _column(frame, spec.gender, _text)
    out["occupation"] = _column(frame, spec.occupation, _text)
    out["zip_code"] = _column(frame, spec.zip_code, _text)
    out["attributes"] = _attributes(frame, spec.attributes)
    return pd.DataFrame(out)


def _column(frame: pd.DataFrame, name: str | None, convert: Any) -> list[Any] | None:
    return None if name is None else [convert(v) for v in frame[name]]


def _attributes(frame: pd.DataFrame, names: tuple[str, ...]) -> list[dict[str, Any] | None] | None:
    if not names:
        return None
    columns = [frame[n].tolist() for n in names]
    rows: list[dict[str, Any] | None] = []
    for i in range(len(frame)):
        found = {
            n: _json_value(c[i]) for n, c in zip(names, columns, strict=True) if c[i] is not None
        }
        rows.append(found or None)
    return rows


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value == ""


def _text(value: Any) -> str | None:
    return None if _missing(value) else str(value)


def _integer(value: Any) -> int | None:
    if _missing(value):
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        return None


def _number(value: Any) -> float | None:
    if _missing(value):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _flag(value: Any) -> bool | None:
    if _missing(value):
        return None
    if isinstance(value, bool | int | float | Decimal):
        return bool(value)
    text = str(value).strip().lower()
    return True if text in _TRUE else False if text in _FALSE else None


def _deleted(value: Any) -> bool:
    """A deletion mark: null, false, 0 or "no" say kept; anything else (true, a time) deleted."""
    if _missing(value):
        return False
    flag = _flag(value)
    return True if flag is None else flag


def _genres(value: Any, separator: str) -> list[str] | None:
    if _missing(value):
        return None
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    found = [g.strip() for g in str(value).split(separator) if g.strip()]
    return found or None


def _json_value(value: Any) -> Any:
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    return str(value)
