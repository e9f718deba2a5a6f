"""Line-level readers for delimited files that reject bad rows instead of failing on them.

Every row that cannot be used becomes a :class:`Reject` with its line number, the reason and
the raw text, so an import never silently loses data.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from recsys.data.frames import Reject
from recsys.errors import DataFileError

# Reasons a row is rejected; the rejects report counts rows per reason.
ENCODING = "encoding"
COLUMN_COUNT = "column_count"
MISSING_ID = "missing_id"
BAD_TIMESTAMP = "bad_timestamp"
IMPOSSIBLE_TIMESTAMP = "impossible_timestamp"
BAD_VALUE = "bad_value"
VALUE_OUT_OF_RANGE = "value_out_of_range"
EMPTY_SEQUENCE = "empty_sequence"

# A timestamp more than this far past the import's clock is impossible, not just early news.
FUTURE_TOLERANCE_MS = 86_400_000
# Numeric timestamps above this are taken as milliseconds, below as seconds (year 5138 in s).
SECONDS_LIMIT = 100_000_000_000


@dataclass
class Table:
    """Rows of one file that split into the expected number of fields, with their line numbers."""

    path: Path
    header: list[str] | None
    rows: list[list[str]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    lines_read: int = 0

    def column(self, index: int) -> pd.Series:
        return pd.Series([r[index] for r in self.rows], dtype=object)


def read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise DataFileError(f"file not found: {path}")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataFileError(f"cannot read {path}: {exc.strerror}") from exc


def decode_lines(
    path: Path, encoding: str = "utf-8", fallback: str | None = None
) -> tuple[list[tuple[int, str]], list[Reject]]:
    """Split a file into (line number, text) pairs; a line that does not decode is rejected.

    With ``fallback`` (e.g. latin-1 for old MovieLens item files) such a line is decoded
    with it instead of being rejected.
    """
    data = read_bytes(path)
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        text = None
    if text is not None:
        if text.startswith("\ufeff"):
            text = text[1:]
        return [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line], []
    decoded: list[tuple[int, str]] = []
    rejects: list[Reject] = []
    for n, raw_line in enumerate(data.splitlines(), start=1):
        if not raw_line:
            continue
        try:
            decoded.append((n, raw_line.decode(encoding)))
        except UnicodeDecodeError:
            if fallback is not None:
                decoded.append((n, raw_line.decode(fallback)))
            else:
                raw = raw_line.decode(encoding, errors="backslashreplace")
                rejects.append(Reject(path.name, n, ENCODING, raw))
    return decoded, rejects


def read_split(
    path: Path,
    separator: str,
    num_columns: int,
    *,
    encoding: str = "utf-8",
    fallback: str | None = None,
    header: bool = False,
) -> Table:
    """Read a file whose fields are split by a plain separator (tab, ``|``, ``::``)."""
    lines, rejects = decode_lines(path, encoding, fallback)
    table = Table(path=path, header=None, rejects=rejects, lines_read=len(lines) + len(rejects))
    if header and lines:
        table.header = lines[0][1].split(separator)
        lines = lines[1:]
        table.lines_read -= 1
    for n, line in lines:
        fields = line.split(separator)
        if len(fields) != num_columns:
            table.rejects.append(Reject(path.name, n, COLUMN_COUNT, line))
            continue
        table.rows.append(fields)
        table.lines.append(n)
        table.raw.append(line)
    return table


def read_csv_table(path: Path, *, delimiter: str = ",", encoding: str = "utf-8") -> Table:
    """Read a CSV file with a header row; rows with another field count are rejected."""
    lines, rejects = decode_lines(path, encoding)
    if not lines:
        raise DataFileError(f"{path} is empty: expected a header row")
    header = next(csv.reader([lines[0][1]], delimiter=delimiter))
    table = Table(path=path, header=[h.strip() for h in header], rejects=rejects)
    table.lines_read = len(lines) - 1 + len(rejects)
    reader = csv.reader(io.StringIO("\n".join(line for _, line in lines[1:])), delimiter=delimiter)
    numbers = [n for n, _ in lines[1:]]
    texts = [line for _, line in lines[1:]]
    try:
        for fields in reader:
            # A quoted field may span lines; line_num is then the last physical line read.
            index = reader.line_num - 1
            n, line = numbers[min(index, len(numbers) - 1)], texts[min(index, len(texts) - 1)]
            if len(fields) != len(header):
                table.rejects.append(Reject(path.name, n, COLUMN_COUNT, line))
                continue
            table.rows.append(fields)
            table.lines.append(n)
            table.raw.append(line)
    except csv.Error as exc:
        raise DataFileError(
            f"{path}: malformed CSV near line {reader.line_num + 1}: {exc}"
        ) from exc
    return table


def column_index(table: Table, name: str, option: str) -> int:
    assert table.header is not None
    if name not in table.header:
        raise DataFileError(
            f"{table.path.name}: no column {name!r} for {option}; columns are "
            + ", ".join(table.header)
        )
    return table.header.index(name)


@dataclass(frozen=True)
class ValueRange:
    low: float
    high: float


def build_events(
    *,
    file: str,
    users: pd.Series,
    items: pd.Series,
    times: pd.Series | None,
    values: pd.Series | None,
    event_types: pd.Series | str,
    lines: Sequence[int] | npt.NDArray[np.int64],
    raw: Sequence[str],
    value_range: ValueRange | None = None,
    time_unit: str = "auto",
    default_times: npt.NDArray[np.int64] | None = None,
    now: datetime | None = None,
) -> tuple[pd.DataFrame, list[Reject]]:
    """Validate raw string columns row by row (vectorised) and return clean events + rejects.

    ``times`` are epoch seconds or milliseconds (``time_unit`` s/ms/auto) or ISO 8601 text;
    without them ``default_times`` give the order. Each bad row is rejected once, for the
    first reason that applies in the order: id, timestamp, value.
    """
    size = len(users)
    users = users.astype(object).where(users.notna(), "").astype(str).str.strip()
    items = items.astype(object).where(items.notna(), "").astype(str).str.strip()
    reason = pd.Series(np.full(size, None, dtype=object))
    reason[(users == "").to_numpy() | (items == "").to_numpy()] = MISSING_ID

    if times is not None:
        occurred, bad_time = parse_times(times, time_unit)
        reason[bad_time & reason.isna().to_numpy()] = BAD_TIMESTAMP
        limit = int((now or datetime.now(UTC)).timestamp() * 1000) + FUTURE_TOLERANCE_MS
        impossible = ~bad_time & ((occurred < 0) | (occurred > limit))
        reason[impossible & reason.isna().to_numpy()] = IMPOSSIBLE_TIMESTAMP
    else:
        assert default_times is not None, "without a time column the caller supplies the order"
        occurred = default_times

    if values is not None:
        text = values.astype(object).where(values.notna(), "").astype(str).str.strip()
        value = pd.to_numeric(text.where(text != "", None), errors="coerce").to_numpy(float)
        unparsable = (text != "").to_numpy() & ~np.isfinite(value)
        reason[unparsable & reason.isna().to_numpy()] = BAD_VALUE
        if value_range is not None:
            out = np.isfinite(value) & ((value < value_range.low) | (value > value_range.high))
            reason[out & reason.isna().to_numpy()] = VALUE_OUT_OF_RANGE
    else:
        value = np.full(size, np.nan)

    if isinstance(event_types, str):
        kinds = pd.Series(np.full(size, event_types, dtype=object))
    else:
        kinds = event_types.astype(object).where(event_types.notna(), "").astype(str).str.strip()
        reason[(kinds == "").to_numpy() & reason.isna().to_numpy()] = MISSING_ID

    bad = reason.notna().to_numpy()
    reasons = reason.tolist()
    rejects = [
        Reject(file, int(lines[i]), str(reasons[i]), raw[i]) for i in np.flatnonzero(bad).tolist()
    ]
    good = ~bad
    frame = pd.DataFrame(
        {
            "user_id": users[good].to_numpy(dtype=object),
            "item_id": items[good].to_numpy(dtype=object),
            "event_type": kinds[good].to_numpy(dtype=object),
            "value": value[good].astype(np.float64),
            "occurred_at": np.asarray(occurred)[good].astype(np.int64),
        }
    )
    return frame, rejects


def parse_times(
    times: pd.Series, unit: str = "auto"
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Epoch milliseconds for each raw timestamp and a mask of those that did not parse."""
    text = times.astype(object).where(times.notna(), "").astype(str).str.strip()
    numeric = pd.to_numeric(text.where(text != "", None), errors="coerce").to_numpy(float)
    millis = np.zeros(len(text), dtype=np.int64)
    is_number = np.isfinite(numeric)
    if unit == "auto":
        scale = np.where(np.abs(numeric) >= SECONDS_LIMIT, 1.0, 1000.0)
    elif unit in ("s", "ms"):
        scale = np.full(len(text), 1000.0 if unit == "s" else 1.0)
    else:
        raise DataFileError(f"unknown time unit {unit!r}: use s, ms or auto")
    # Out-of-int64 numbers are impossible anyway; clip so the cast stays defined.
    millis[is_number] = np.clip(numeric[is_number] * scale[is_number], -(2**62), 2**62).astype(
        np.int64
    )
    textual = ~is_number & (text != "").to_numpy()
    if textual.any():
        parsed = pd.to_datetime(text[textual], utc=True, errors="coerce", format="ISO8601")
        ok = parsed.notna().to_numpy()
        stamps = parsed[ok].astype("datetime64[ms, UTC]").astype("int64").to_numpy()
        idx = np.flatnonzero(textual)
        millis[idx[ok]] = stamps
        is_number[idx[ok]] = True
    return millis, ~is_number
