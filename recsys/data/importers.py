"""Importers: MovieLens (100K, 1M/10M, latest), CSV/Parquet event logs, and sequence files.

Each returns an :class:`ImportBatch` (events, catalogue, rejects) and writes nothing; loading
is :func:`recsys.data.load.load_batch`'s job.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys.data.frames import DEFAULT_EVENT_TYPE, ImportBatch, Reject, empty_items, empty_users
from recsys.data.readers import (
    BAD_ID,
    BAD_TEXT,
    BAD_VALUE,
    EMPTY_SEQUENCE,
    Table,
    ValueRange,
    build_catalogue,
    build_events,
    column_index,
    decode_lines,
    read_csv_table,
    read_split,
)
from recsys.db.schema import items_table, users_table
from recsys.errors import DataFileError
from recsys.ids import FORBIDDEN, MAX_ID_LENGTH, UNSTORABLE

MOVIELENS_RATINGS = ValueRange(0.5, 5.0)
RATING = "rating"

# Events without timestamps (sequence files, CSVs without a time column) are placed one
# second apart from this fixed origin, so their order survives and a re-import is a no-op.
SEQUENCE_EPOCH_MS = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp() * 1000)
SEQUENCE_STEP_MS = 1000

ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)  # fmt: skip
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
CATALOGUE_TABLES = {"item_id": items_table, "user_id": users_table}
_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")
# Tokens of a sequence line are split by spaces and tabs only; other characters are id text.
_TOKEN_GAP = re.compile("[ \t]+")


def import_movielens(path: Path) -> ImportBatch:
    """Read a MovieLens folder, recognising its release by the files it holds."""
    path = Path(path)
    if not path.is_dir():
        raise DataFileError(f"not a folder: {path}")
    if (path / "u.data").exists():
        return _movielens_100k(path)
    if (path / "ratings.dat").exists():
        return _movielens_dat(path)
    if (path / "ratings.csv").exists():
        return _movielens_csv(path)
    raise DataFileError(
        f"{path} is not a MovieLens folder: expected u.data (100K), ratings.dat (1M/10M) "
        "or ratings.csv (latest)"
    )


def _movielens_100k(path: Path) -> ImportBatch:
    ratings = read_split(path / "u.data", "\t", 4)
    events, rejects = _rating_events(ratings, users=0, items=1, values=2, times=3)

    catalogue: list[Reject] = []
    genre_names = list(ML100K_GENRES)
    if (path / "u.genre").exists():
        genres = read_split(path / "u.genre", "|", 2, encoding="latin-1")
        catalogue += genres.rejects
        by_index: dict[int, str] = {}
        for (name, index), n, raw in zip(genres.rows, genres.lines, genres.raw, strict=True):
            if not index.strip().isdigit():
                catalogue.append(Reject(genres.path.name, n, BAD_VALUE, raw))
            elif UNSTORABLE.search(name):
                catalogue.append(Reject(genres.path.name, n, BAD_TEXT, raw))
            else:
                by_index[int(index)] = name
        genre_names = [by_index.get(i, genre_names[i]) for i in range(len(genre_names))]

    items = empty_items()
    if (path / "u.item").exists():
        table = read_split(path / "u.item", "|", 5 + len(genre_names), encoding="latin-1")
        items = pd.DataFrame(
            {
                "item_id": [r[0] for r in table.rows],
                "title": [r[1].strip() or None for r in table.rows],
                "genres": [
                    [g for g, flag in zip(genre_names, r[5:], strict=True) if flag.strip() == "1"]
                    for r in table.rows
                ],
                "year": [_year(r[1], r[2]) for r in table.rows],
                "price": None,
                "attributes": [
                    {"imdb_url": r[4].strip()} if r[4].strip() else None for r in table.rows
                ],
            }
        )
        items = _catalogue(items, "item_id", table, catalogue)
    users = empty_users()
    if (path / "u.user").exists():
        table = read_split(path / "u.user", "|", 5, encoding="latin-1")
        users = pd.DataFrame(
            {
                "user_id": [r[0] for r in table.rows],
                "age": [_int_or_none(r[1]) for r in table.rows],
                "gender": [r[2].strip() or None for r in table.rows],
                "occupation": [r[3].strip() or None for r in table.rows],
                "zip_code": [r[4].strip() or None for r in table.rows],
                "attributes": None,
            }
        )
        users = _catalogue(users, "user_id", table, catalogue)
    return ImportBatch(
        kind="movielens",
        source=f"movielens-100k:{path.name}",
        interactions=events,
        items=items,
        users=users,
        rejects=rejects,
        rows_read=ratings.lines_read,
        catalogue_rejects=catalogue,
    )


def _catalogue(frame: pd.DataFrame, key: str, table: Table, rejects: list[Reject]) -> pd.DataFrame:
    """``frame`` (built row for row from ``table``) less the rows the store cannot hold."""
    kept, rejected = build_catalogue(
        frame, CATALOGUE_TABLES[key], key, file=table.path.name, lines=table.lines, raw=table.raw
    )
    rejects += table.rejects + rejected
    return kept


def _movielens_dat(path: Path) -> ImportBatch:
    ratings = read_split(path / "ratings.dat", "::", 4)
    events, rejects = _rating_events(ratings, users=0, items=1, values=2, times=3)
    catalogue: list[Reject] = []
    items = empty_items()
    if (path / "movies.dat").exists():
        table = read_split(path / "movies.dat", "::", 3, fallback="latin-1")
        items = _movie_frame(
            [r[0] for r in table.rows], [r[1] for r in table.rows], [r[2] for r in table.rows]
        )
        items = _catalogue(items, "item_id", table, catalogue)
    users = empty_users()
    if (path / "users.dat").exists():
        table = read_split(path / "users.dat", "::", 5)
        users = pd.DataFrame(
            {
                "user_id": [r[0] for r in table.rows],
                "age": [_int_or_none(r[2]) for r in table.rows],
                "gender": [r[1].strip() or None for r in table.rows],
                "occupation": [_occupation(r[3]) for r in table.rows],
                "zip_code": [r[4].strip() or None for r in table.rows],
                "attributes": None,
            }
        )
        users = _catalogue(users, "user_id", table, catalogue)
    return ImportBatch(
        kind="movielens",
        source=f"movielens-dat:{path.name}",
        interactions=events,
        items=items,
        users=users,
        rejects=rejects,
        rows_read=ratings.lines_read,
        catalogue_rejects=catalogue,
    )


def _movielens_csv(path: Path) -> ImportBatch:
    ratings = read_csv_table(path / "ratings.csv")
    columns = {
        option: column_index(ratings, name, option)
        for option, name in (
            ("users", "userId"),
            ("items", "movieId"),
            ("values", "rating"),
            ("times", "timestamp"),
        )
    }
    events, rejects = _rating_events(ratings, **columns)
    catalogue: list[Reject] = []
    items = empty_items()
    if (path / "movies.csv").exists():
        table = read_csv_table(path / "movies.csv")
        idx = [column_index(table, c, "movies.csv") for c in ("movieId", "title", "genres")]
        items = _movie_frame(*([r[i] for r in table.rows] for i in idx))
        items = _catalogue(items, "item_id", table, catalogue)
    return ImportBatch(
        kind="movielens",
        source=f"movielens-latest:{path.name}",
        interactions=events,
        items=items,
        users=empty_users(),
        rejects=rejects,
        rows_read=ratings.lines_read,
        catalogue_rejects=catalogue,
    )


def _rating_events(
    table: Any, *, users: int, items: int, values: int, times: int
) -> tuple[pd.DataFrame, list[Reject]]:
    events, rejects = build_events(
        file=table.path.name,
        users=table.column(users),
        items=table.column(items),
        times=table.column(times),
        values=table.column(values),
        event_types=RATING,
        lines=table.lines,
        raw=table.raw,
        value_range=MOVIELENS_RATINGS,
        time_unit="s",
    )
    return events, table.rejects + rejects


def _movie_frame(ids: Sequence[str], titles: Sequence[str], genres: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": list(ids),
            "title": [t.strip() or None for t in titles],
            "genres": [
                [g for g in s.strip().split("|") if g and g != "(no genres listed)"] for s in genres
            ],
            "year": [_year(t) for t in titles],
            "price": None,
            "attributes": None,
        }
    )


def _year(title: str, release_date: str = "") -> int | None:
    match = _YEAR_IN_TITLE.search(title.strip())
    if match:
        return int(match.group(1))
    tail = release_date.strip()[-4:]
    return int(tail) if tail.isdigit() else None


def _int_or_none(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.lstrip("-").isdigit() else None


def _occupation(code: str) -> str | None:
    value = _int_or_none(code)
    if value is not None and 0 <= value < len(ML1M_OCCUPATIONS):
        return ML1M_OCCUPATIONS[value]
    return code.strip() or None


@dataclass(frozen=True)
class CsvColumns:
    """Which columns of an event file hold what; only user and item are required."""

    user: str
    item: str
    time: str | None = None
    value: str | None = None
    event_type: str | None = None


def import_events(
    path: Path,
    columns: CsvColumns,
    *,
    event_type: str = DEFAULT_EVENT_TYPE,
    time_unit: str = "auto",
    value_range: ValueRange | None = None,
    delimiter: str | None = None,
    items_path: Path | None = None,
    users_path: Path | None = None,
) -> ImportBatch:
    """Read an event log from CSV/TSV or Parquet, with optional item and user attribute files.

    Without a time column, events keep the file's order (one second apart from a fixed origin).
    """
    path = Path(path)
    table = _read_table(path, delimiter)
    frame, rows_read = table
    wanted = {
        "user": columns.user,
        "item": columns.item,
        "time": columns.time,
        "value": columns.value,
        "event_type": columns.event_type,
    }
    for option, name in wanted.items():
        if name is not None and name not in frame.columns:
            known = ", ".join(c for c in map(str, frame.columns) if not c.startswith("__"))
            raise DataFileError(
                f"{path.name}: no column {name!r} for --{option.replace('_', '-')}-col; "
                f"columns are {known}"
            )
    lines = frame["__line"].to_numpy(dtype=np.int64)
    events, rejects = build_events(
        file=path.name,
        users=frame[columns.user],
        items=frame[columns.item],
        times=frame[columns.time] if columns.time else None,
        values=frame[columns.value] if columns.value else None,
        event_types=frame[columns.event_type] if columns.event_type else event_type,
        lines=lines,
        raw=frame["__raw"].tolist(),
        value_range=value_range,
        time_unit=time_unit,
        default_times=SEQUENCE_EPOCH_MS + lines.astype(np.int64) * SEQUENCE_STEP_MS,
    )
    rejects = sorted(frame.attrs.get("rejects", []) + rejects, key=lambda r: r.line)
    catalogue: list[Reject] = []
    items = empty_items()
    if items_path is not None:
        items, item_rejects = _attribute_file(
            Path(items_path), "item_id", columns.item, ITEM_FIELDS, delimiter
        )
        catalogue += item_rejects
    users = empty_users()
    if users_path is not None:
        users, user_rejects = _attribute_file(
            Path(users_path), "user_id", columns.user, USER_FIELDS, delimiter
        )
        catalogue += user_rejects
    return ImportBatch(
        kind="csv" if path.suffix.lower() not in PARQUET_SUFFIXES else "parquet",
        source=path.name,
        interactions=events,
        items=items,
        users=users,
        rejects=rejects,
        rows_read=rows_read,
        catalogue_rejects=catalogue,
    )


PARQUET_SUFFIXES = (".parquet", ".pq")
ITEM_FIELDS = {"title": str, "genres": list, "year": int, "price": float}
USER_FIELDS = {"age": int, "gender": str, "occupation": str, "zip_code": str}


def _read_table(path: Path, delimiter: str | None) -> tuple[pd.DataFrame, int]:
    """All columns as text plus ``__line``/``__raw``; rows that did not split are in attrs."""
    if path.suffix.lower() in PARQUET_SUFFIXES:
        if not path.is_file():
            raise DataFileError(f"file not found: {path}")
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for damaged files
            raise DataFileError(
                f"cannot read Parquet file {path}: {str(exc).splitlines()[0]}"
            ) from exc
        frame = frame.astype(object).where(frame.notna(), None)
        frame["__line"] = np.arange(1, len(frame) + 1)
        frame["__raw"] = [repr(r) for r in frame.drop(columns="__line").itertuples(index=False)]
        frame.attrs["rejects"] = []
        return frame, len(frame)
    suffix = Path(path.stem).suffix if path.suffix.lower() == ".gz" else path.suffix
    sep = delimiter or ("\t" if suffix.lower() in (".tsv", ".tab") else ",")
    table = read_csv_table(path, delimiter=sep)
    assert table.header is not None
    frame = (
        pd.DataFrame(table.rows, columns=table.header, dtype=object)
        if table.rows
        else pd.DataFrame(columns=table.header, dtype=object)
    )
    frame["__line"] = np.asarray(table.lines, dtype=np.int64)
    frame["__raw"] = table.raw
    frame.attrs["rejects"] = table.rejects
    return frame, table.lines_read


def _attribute_file(
    path: Path, key: str, alt_key: str, fields: dict[str, type], delimiter: str | None
) -> tuple[pd.DataFrame, list[Reject]]:
    """Catalogue attributes: known fields become columns, any other column goes to attributes."""
    frame, _ = _read_table(path, delimiter)
    id_col = key if key in frame.columns else alt_key
    if id_col not in frame.columns:
        raise DataFileError(f"{path.name}: needs an id column named {key!r} or {alt_key!r}")
    out: dict[str, Any] = {key: frame[id_col].tolist()}
    for name, kind in fields.items():
        out[name] = [_convert(v, kind) for v in frame[name]] if name in frame.columns else None
    extra = [c for c in frame.columns if c not in fields and c not in (id_col, "__line", "__raw")]
    out["attributes"] = (
        [
            {c: v for c, v in zip(extra, row, strict=True) if v not in (None, "")} or None
            for row in frame[extra].itertuples(index=False)
        ]
        if extra
        else None
    )
    kept, rejects = build_catalogue(
        pd.DataFrame(out),
        CATALOGUE_TABLES[key],
        key,
        file=path.name,
        lines=frame["__line"].tolist(),
        raw=[str(r) for r in frame["__raw"]],
    )
    return kept, sorted(frame.attrs["rejects"] + rejects, key=lambda r: r.line)


def _convert(value: Any, kind: type) -> Any:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return None
    if kind is list:
        if isinstance(value, list | tuple | np.ndarray):
            return [str(v) for v in value]
        return [g.strip() for g in str(value).split("|") if g.strip()]
    try:
        return kind(float(value)) if kind is int else kind(value)
    except (TypeError, ValueError, OverflowError):
        return None


def import_sequences(path: Path) -> ImportBatch:
    """Read lines ``user item item ...`` (time order); positions become one-second steps.

    Tokens are split by spaces and tabs. A line is loaded whole or rejected whole: without an
    item (empty_sequence) or with a token that is not a valid id (bad_id). ``rows_read``
    counts the events of the lines kept plus the lines rejected.
    """
    path = Path(path)
    lines, rejects = decode_lines(path)
    users: list[str] = []
    items: list[str] = []
    offsets: list[int] = []
    for n, line in lines:
        if FORBIDDEN.search(line.replace("\t", " ")):
            rejects.append(Reject(path.name, n, BAD_ID, line))
            continue
        # With no control character left, an ASCII line holds no whitespace but spaces and tabs.
        tokens = line.split() if line.isascii() else _TOKEN_GAP.split(line.strip(" \t"))
        if len(tokens) < 2:
            rejects.append(Reject(path.name, n, EMPTY_SEQUENCE, line))
            continue
        if len(line) > MAX_ID_LENGTH and max(map(len, tokens)) > MAX_ID_LENGTH:
            rejects.append(Reject(path.name, n, BAD_ID, line))
            continue
        users.extend([tokens[0]] * (len(tokens) - 1))
        items.extend(tokens[1:])
        offsets.extend(range(len(tokens) - 1))
    events = pd.DataFrame(
        {
            "user_id": pd.Series(users, dtype=object),
            "item_id": pd.Series(items, dtype=object),
            "event_type": pd.Series(np.full(len(users), DEFAULT_EVENT_TYPE, dtype=object)),
            "value": np.full(len(users), np.nan),
            "occurred_at": SEQUENCE_EPOCH_MS
            + np.asarray(offsets, dtype=np.int64) * SEQUENCE_STEP_MS,
        }
    )
    return ImportBatch(
        kind="sequences",
        source=path.name,
        interactions=events,
        rejects=sorted(rejects, key=lambda r: r.line),
        rows_read=len(events) + len(rejects),
    )
