"""Line-level readers for delimited files that reject bad rows instead of failing on them.

Every record that cannot be used becomes a :class:`Reject` with its first line number, the
reason and the raw text, so an import never silently loses data: the records read are exactly
the rows kept plus the rows rejected.
"""

from __future__ import annotations

import gzip
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from pandas.api.types import infer_dtype
from sqlalchemy.types import TypeEngine

from recsys.data.frames import Reject
from recsys.errors import DataFileError, RecsysError
from recsys.ids import (
    FORBIDDEN,
    FORBIDDEN_ARROW,
    MAX_EVENT_TYPE_LENGTH,
    MAX_ID_LENGTH,
    UNSTORABLE,
    event_type_problem,
)

# Reasons a row is rejected; the rejects report counts rows per reason.
ENCODING = "encoding"
COLUMN_COUNT = "column_count"
MISSING_ID = "missing_id"
BAD_TIMESTAMP = "bad_timestamp"
IMPOSSIBLE_TIMESTAMP = "impossible_timestamp"
BAD_VALUE = "bad_value"
VALUE_OUT_OF_RANGE = "value_out_of_range"
EMPTY_SEQUENCE = "empty_sequence"
MALFORMED_CSV = "malformed_csv"
BAD_ID = "bad_id"
BAD_TEXT = "bad_text"
# id_text converts a column this long once per distinct id (see there).
ID_TEXT_DISTINCT_FROM = 1_000
TOO_LONG = "too_long"

QUOTE = '"'
# A quoted field may span lines, but not more than this many: a stray quote then costs a
# bounded look-ahead, so a file full of them still reads in linear time.
MAX_QUOTED_LINES = 64
GZIP_MAGIC = b"\x1f\x8b"
# Ids lose surrounding spaces and tabs; any other character is part of the id (and judged).
ID_PADDING = " \t"

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

    def finish(self) -> None:
        """Order the rejects by line and count the records: every one is a row or a reject."""
        self.rejects.sort(key=lambda r: r.line)
        self.lines_read = len(self.rows) + len(self.rejects)


def read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when it is gzip (by its magic number or a ``.gz`` name)."""
    if not path.is_file():
        raise DataFileError(f"file not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataFileError(f"cannot read {path}: {exc.strerror}") from exc
    if data[:2] != GZIP_MAGIC and path.suffix.lower() != ".gz":
        return data
    if not data:
        raise DataFileError(f"{path} is a truncated or corrupt gzip file: it has no bytes")
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as exc:
        raise DataFileError(f"{path} is a truncated or corrupt gzip file: {exc}") from exc


def physical_lines(
    path: Path, encoding: str = "utf-8", fallback: str | None = None
) -> tuple[list[str | None], list[Reject]]:
    """The file split into physical lines: item ``i`` is line ``i + 1``, None where it is rejected.

    Only ``\\n`` and ``\\r\\n`` end a line; any other character (a lone ``\\r``, U+2028, form
    feed) is text. A line that does not decode is rejected unless ``fallback`` (e.g. latin-1
    for old MovieLens item files) decodes it instead. Empty lines are kept, as ``""``.
    """
    data = read_bytes(path)
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        text = None
    texts: list[str | None]
    rejects: list[Reject] = []
    if text is not None:
        if "\r" in text:
            text = text.replace("\r\n", "\n")
        texts = cast(list[str | None], text.split("\n"))
    else:
        texts = []
        pieces = data.split(b"\n")
        last = len(pieces)
        for n, piece in enumerate(pieces, start=1):
            line = piece[:-1] if n < last and piece.endswith(b"\r") else piece
            try:
                texts.append(line.decode(encoding))
            except UnicodeDecodeError:
                if fallback is not None:
                    texts.append(line.decode(fallback))
                else:
                    texts.append(None)
                    raw = line.decode(encoding, errors="backslashreplace")
                    rejects.append(Reject(path.name, n, ENCODING, raw))
    if texts and texts[-1] == "":
        texts.pop()
    first = texts[0] if texts else None
    if first is not None and first.startswith("\ufeff"):
        texts[0] = first[1:]
    return texts, rejects


def decode_lines(
    path: Path, encoding: str = "utf-8", fallback: str | None = None
) -> tuple[list[tuple[int, str]], list[Reject]]:
    """The non-empty lines of a file as (line number, text), and the lines that did not decode.

    See :func:`physical_lines` for what ends a line.
    """
    texts, rejects = physical_lines(path, encoding, fallback)
    return [(n, line) for n, line in enumerate(texts, start=1) if line], rejects


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
    table = Table(path=path, header=None, rejects=rejects)
    if header and lines:
        table.header = lines[0][1].split(separator)
        lines = lines[1:]
    name = path.name
    for n, line in lines:
        fields = line.split(separator)
        if len(fields) != num_columns:
            table.rejects.append(Reject(name, n, COLUMN_COUNT, line))
            continue
        table.rows.append(fields)
        table.lines.append(n)
        table.raw.append(line)
    table.finish()
    return table


def read_csv_table(path: Path, *, delimiter: str = ",", encoding: str = "utf-8") -> Table:
    """Read a CSV file with a header row; each record that does not parse is rejected alone.

    A quoted field may hold delimiters, doubled quotes and line breaks; its record then spans
    lines and is reported at its first. A line whose quote does not close (within
    :data:`MAX_QUOTED_LINES`, into a record of the header's field count) is rejected as
    malformed and reading resumes at the next line, as it does after a line with other than
    the header's field count. Line breaks inside a field read as ``\\n``.
    """
    texts, rejects = physical_lines(path, encoding)
    start = next((i for i, text in enumerate(texts) if text != ""), None)
    if start is None:
        raise DataFileError(f"{path} is empty: expected a header row")
    if texts[start] is None:
        raise DataFileError(
            f"{path}: the header row (line {start + 1}) is not {encoding} text; "
            "is the file binary, or compressed other than with gzip?"
        )
    parsed = _parse_record(texts, start, delimiter)
    if parsed is None:
        raise DataFileError(f"{path}: malformed CSV header row (line {start + 1})")
    header, end = parsed
    table = Table(path=path, header=[h.strip() for h in header], rejects=rejects)
    width = len(header)
    name = path.name
    rows, lines, raws, rejected = table.rows, table.lines, table.raw, table.rejects
    resume = end + 1
    for i, text in enumerate(texts):
        if i < resume or not text:
            continue
        if QUOTE not in text:
            fields = text.split(delimiter)
            if len(fields) == width:
                rows.append(fields)
                lines.append(i + 1)
                raws.append(text)
            else:
                rejected.append(Reject(name, i + 1, COLUMN_COUNT, text))
            continue
        parsed = _parse_record(texts, i, delimiter)
        if parsed is None:
            rejected.append(Reject(name, i + 1, MALFORMED_CSV, text))
            continue
        fields, last = parsed
        if len(fields) != width:
            reason = COLUMN_COUNT if last == i else MALFORMED_CSV
            rejected.append(Reject(name, i + 1, reason, text))
            continue
        rows.append(fields)
        lines.append(i + 1)
        if last == i:
            raws.append(text)
        else:
            raws.append("\n".join(t or "" for t in texts[i : last + 1]))
            resume = last + 1
    table.finish()
    return table


def _parse_record(
    texts: Sequence[str | None], start: int, delimiter: str
) -> tuple[list[str], int] | None:
    """The fields of the CSV record that starts on line ``start`` and the index of its last line.

    None when it is malformed: text after a closing quote other than the delimiter, or a quote
    left open at the end of the file, at an undecodable line or after MAX_QUOTED_LINES lines.
    Quotes only matter at the start of a field, as in Python's csv module.
    """
    text = texts[start]
    assert text is not None
    last, pos, step = start, 0, len(delimiter)
    fields: list[str] = []
    while True:
        if not text.startswith(QUOTE, pos):
            cut = text.find(delimiter, pos)
            if cut < 0:
                fields.append(text[pos:])
                return fields, last
            fields.append(text[pos:cut])
            pos = cut + step
            continue
        parts: list[str] = []
        pos += 1
        while True:
            close = text.find(QUOTE, pos)
            if close < 0:
                parts.append(text[pos:])
                last += 1
                if last - start >= MAX_QUOTED_LINES or last >= len(texts):
                    return None
                following = texts[last]
                if following is None:
                    return None
                parts.append("\n")
                text, pos = following, 0
            elif text.startswith(QUOTE, close + 1):
                parts.append(text[pos : close + 1])
                pos = close + 2
            else:
                parts.append(text[pos:close])
                pos = close + 1
                break
        fields.append("".join(parts))
        if pos == len(text):
            return fields, last
        if not text.startswith(delimiter, pos):
            return None
        pos += step


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


def id_text(values: pd.Series) -> pd.Series:
    """Ids as text without surrounding spaces and tabs; a missing value becomes ``""``.

    A long column of plain integers or strings (a chunk of events: each user and item comes
    back many times) is converted once per distinct id; other columns value by value (1, 1.0
    and True are one key to a hash table but three texts).
    """
    if len(values) >= ID_TEXT_DISTINCT_FROM and infer_dtype(values, skipna=True) in (
        "integer",
        "string",
    ):
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
        text = _id_text(pd.Series(uniques, dtype=object))
        return pd.Series(text.array.take(codes, allow_fill=True, fill_value=""), index=values.index)
    return _id_text(values)


def _id_text(values: pd.Series) -> pd.Series:
    return values.astype(object).where(values.notna(), "").astype(str).str.strip(ID_PADDING)


def forbidden_mask(values: pd.Series) -> npt.NDArray[np.bool_]:
    """Which texts hold a character :func:`recsys.ids.forbidden_character` refuses (vectorised)."""
    if getattr(values.dtype, "storage", None) == "pyarrow":
        hits = pc.match_substring_regex(pa.array(values.array), FORBIDDEN_ARROW)
        return np.asarray(pc.fill_null(hits, False).to_numpy(zero_copy_only=False), dtype=bool)
    found = values.str.contains(FORBIDDEN.pattern, regex=True)
    return np.asarray(found.fillna(False).to_numpy(), dtype=bool)


def invalid_id_mask(ids: pd.Series) -> npt.NDArray[np.bool_]:
    """Which non-empty ids :func:`recsys.ids.id_problem` refuses: too long or a forbidden char."""
    return forbidden_mask(ids) | (ids.str.len() > MAX_ID_LENGTH).to_numpy(dtype=bool)


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
    first reason that applies in the order: id, timestamp, value. An id or event type is
    stripped of spaces and tabs only, then held to :mod:`recsys.ids`'s rule (``bad_id``).
    """
    size = len(users)
    users, items = id_text(users), id_text(items)
    if isinstance(event_types, str):
        problem = event_type_problem(event_types)
        if problem is not None:
            raise RecsysError(f"event type {event_types!r} {problem}")
        kinds = pd.Series(np.full(size, event_types, dtype=object))
        missing_kind = bad_kind = np.zeros(size, dtype=bool)
    else:
        kinds = id_text(event_types)
        missing_kind = (kinds == "").to_numpy()
        too_long = (kinds.str.len() > MAX_EVENT_TYPE_LENGTH).to_numpy(dtype=bool)
        bad_kind = forbidden_mask(kinds) | too_long
    reason = pd.Series(np.full(size, None, dtype=object))
    reason[(users == "").to_numpy() | (items == "").to_numpy() | missing_kind] = MISSING_ID
    bad_id = invalid_id_mask(users) | invalid_id_mask(items) | bad_kind
    reason[bad_id & reason.isna().to_numpy()] = BAD_ID

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

    bad = reason.notna().to_numpy()
    reasons = reason.tolist()
    rejects = [
        Reject(file, int(lines[i]), str(reasons[i]), raw[i]) for i in np.flatnonzero(bad).tolist()
    ]
    good = ~bad

    def kept(column: pd.Series) -> Any:
        # The text arrays as they are: through object arrays, the frame converted every id
        # back again, a third of this function's time.
        return (column[good] if rejects else column).array

    frame = pd.DataFrame(
        {
            "user_id": kept(users),
            "item_id": kept(items),
            "event_type": kept(kinds),
            "value": value[good].astype(np.float64),
            "occurred_at": np.asarray(occurred)[good].astype(np.int64),
        }
    )
    return frame, rejects


def build_catalogue(
    frame: pd.DataFrame,
    table: sa.Table,
    key: str,
    *,
    file: str,
    lines: Sequence[int],
    raw: Sequence[str],
) -> tuple[pd.DataFrame, list[Reject]]:
    """Keep the item or user rows the store can hold and reject the others, one reason each.

    ``frame`` has the key column and columns named as in ``table``; row ``i`` came from line
    ``lines[i]``. The id must be a valid external id (missing_id, bad_id); other text must hold
    no NUL or surrogate, even inside lists and attribute maps (bad_text), and fit its column
    (too_long); numbers must fit theirs (value_out_of_range). Each of these would otherwise
    fail the whole load, on PostgreSQL at least.
    """
    ids = id_text(frame[key])
    missing = (ids == "").to_numpy()
    bad = invalid_id_mask(ids)
    names = [c for c in frame.columns if c != key]
    kinds = [table.c[c].type for c in names]
    reasons: list[str | None] = []
    for i, row in enumerate(frame[names].itertuples(index=False, name=None)):
        if missing[i]:
            reasons.append(MISSING_ID)
        elif bad[i]:
            reasons.append(BAD_ID)
        else:
            problems = (_storage_problem(v, k) for v, k in zip(row, kinds, strict=True))
            reasons.append(next((p for p in problems if p is not None), None))
    keep = np.array([r is None for r in reasons], dtype=bool)
    rejects = [
        Reject(file, int(lines[i]), reason, raw[i])
        for i, reason in enumerate(reasons)
        if reason is not None
    ]
    return frame.assign(**{key: ids})[keep].reset_index(drop=True), rejects


def _storage_problem(value: Any, kind: TypeEngine[Any]) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        if UNSTORABLE.search(value):
            return BAD_TEXT
        length = getattr(kind, "length", None)
        return TOO_LONG if length is not None and len(value) > length else None
    if isinstance(value, int | float | np.integer | np.floating):
        try:
            number = float(value)
        except OverflowError:
            return VALUE_OUT_OF_RANGE
        return None if _fits(number, kind) else VALUE_OUT_OF_RANGE
    return BAD_TEXT if _holds_unstorable(value) else None


def _fits(number: float, kind: TypeEngine[Any]) -> bool:
    if math.isnan(number):
        return True
    if isinstance(kind, sa.Integer):
        limit = 2.0**63 if isinstance(kind, sa.BigInteger) else 2.0**31
        return -limit <= number < limit
    if isinstance(kind, sa.Numeric) and kind.precision is not None and kind.scale is not None:
        return abs(number) < 10.0 ** (kind.precision - kind.scale) - 0.5 * 10.0**-kind.scale
    return math.isfinite(number) or isinstance(kind, sa.Float)


def _holds_unstorable(value: Any) -> bool:
    if isinstance(value, str):
        return UNSTORABLE.search(value) is not None
    if isinstance(value, dict):
        return any(_holds_unstorable(k) or _holds_unstorable(v) for k, v in value.items())
    if isinstance(value, list | tuple | np.ndarray):
        return any(_holds_unstorable(v) for v in value)
    return False


def parse_times(
    times: pd.Series, unit: str = "auto"
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Epoch milliseconds for each raw timestamp and a mask of those that did not parse.

    Times may also come parsed, as a timezone-aware datetime column (NaT: did not parse).
    """
    if unit not in ("auto", "s", "ms"):
        raise DataFileError(f"unknown time unit {unit!r}: use s, ms or auto")
    if isinstance(times.dtype, pd.DatetimeTZDtype):
        missing = times.isna().to_numpy()
        stamps = times.dt.tz_convert(UTC).astype("datetime64[ms, UTC]").astype("int64")
        return np.where(missing, 0, stamps.to_numpy()).astype(np.int64), missing
    text = times.astype(object).where(times.notna(), "").astype(str).str.strip()
    numeric = pd.to_numeric(text.where(text != "", None), errors="coerce").to_numpy(float)
    millis = np.zeros(len(text), dtype=np.int64)
    is_number = np.isfinite(numeric)
    if unit == "auto":
        scale = np.where(np.abs(numeric) >= SECONDS_LIMIT, 1.0, 1000.0)
    else:
        scale = np.full(len(text), 1000.0 if unit == "s" else 1.0)
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
