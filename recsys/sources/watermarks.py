"""Where each source's sync stands: the watermark stored per source, and the look-back bound.

The value is kept as text with its type so it goes back to the source database as the same
kind of value it came from (a number, a time with or without its offset, a date, text).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, insert, select, update

from recsys.db.schema import source_watermarks_table as table

_FRACTION = re.compile(r"\.(\d+)")


def encode(value: Any) -> tuple[str, str]:
    """The value as (text, type) for the ``source_watermarks`` table."""
    if isinstance(value, bool):
        return str(int(value)), "int"
    if isinstance(value, int):
        return str(value), "int"
    if isinstance(value, float):
        return repr(value), "float"
    if isinstance(value, Decimal):
        return str(value), "decimal"
    if isinstance(value, datetime):
        return value.isoformat(), "datetime"
    if isinstance(value, date):
        return value.isoformat(), "date"
    return str(value), "text"


def decode(text: str, kind: str) -> Any:
    readers: dict[str, Any] = {
        "int": int,
        "float": float,
        "decimal": Decimal,
        "datetime": datetime.fromisoformat,
        "date": date.fromisoformat,
    }
    return readers.get(kind, str)(text)


def lower_bound(value: Any, lookback: float) -> Any:
    """The value rows must exceed to be read: the watermark less the look-back.

    Times go back ``lookback`` seconds; numbers go back ``lookback`` units; text that reads as
    an ISO time (SQLite keeps times as text) goes back in time and keeps its layout.
    """
    if not lookback:
        return value
    if isinstance(value, datetime | date):
        return value - timedelta(seconds=lookback)
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value - lookback if lookback % 1 else value - int(lookback)
    if isinstance(value, float):
        return value - lookback
    if isinstance(value, Decimal):
        return value - Decimal(str(lookback))
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
        earlier = moment - timedelta(seconds=lookback)
        separator = value[10] if len(value) > 10 else " "
        if len(value) == 10:
            return earlier.date().isoformat()
        fraction = _FRACTION.match(value, 19)
        digits = len(fraction.group(1)) if fraction else 0
        spec = {0: "seconds", 3: "milliseconds"}.get(digits, "microseconds")
        return earlier.isoformat(sep=separator, timespec=spec)
    return value


def later(stored: Any, candidate: Any) -> Any:
    """The later of two watermark values (the candidate when they do not compare)."""
    if stored is None:
        return candidate
    try:
        return candidate if candidate > stored else stored
    except TypeError:
        return candidate


def read_watermark(engine: Engine, name: str, column: str) -> Any:
    """The stored watermark of ``name``; None when there is none or it was of another column."""
    with engine.connect() as conn:
        row = conn.execute(
            select(table.c.column_name, table.c.value, table.c.value_type).where(
                table.c.name == name
            )
        ).first()
    if row is None or row.column_name != column:
        return None
    return decode(row.value, row.value_type)


def write_watermark(engine: Engine, name: str, column: str, value: Any) -> None:
    """Store the watermark in its own transaction (after the rows up to it are committed)."""
    text, kind = encode(value)
    values = {
        "column_name": column,
        "value": text,
        "value_type": kind,
        "updated_at": datetime.now(UTC),
    }
    with engine.begin() as conn:
        moved = conn.execute(update(table).where(table.c.name == name).values(**values))
        if moved.rowcount == 0:
            conn.execute(insert(table).values(name=name, **values))
