"""Which reader each kind of import uses, with its options: the one table the CLI
(`recsys import ...`, the demo) and the ingest flow share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from recsys.data.frames import DEFAULT_EVENT_TYPE, ImportBatch
from recsys.data.importers import CsvColumns, import_events, import_movielens, import_sequences
from recsys.data.readers import ValueRange
from recsys.errors import DataFileError


@dataclass(frozen=True)
class EventFileOptions:
    """How to read an event log (the ``csv`` kind): its columns and the optional extras.

    Numeric times are read as ``time_unit`` (``auto``, ``s`` or ``ms``); values outside
    ``min_rating``..``max_rating`` are rejected; ``items``/``users`` are attribute files.
    """

    user_col: str
    item_col: str
    time_col: str | None = None
    rating_col: str | None = None
    event_type: str = DEFAULT_EVENT_TYPE
    event_type_col: str | None = None
    time_unit: str = "auto"
    min_rating: float | None = None
    max_rating: float | None = None
    delimiter: str | None = None
    items: str | None = None
    users: str | None = None


Importer = Callable[[Path, EventFileOptions | None], ImportBatch]


def _read_event_file(path: Path, options: EventFileOptions | None) -> ImportBatch:
    if options is None:
        raise DataFileError("csv imports need the user and item columns (user_col, item_col)")
    value_range = None
    if options.min_rating is not None or options.max_rating is not None:
        value_range = ValueRange(
            float("-inf") if options.min_rating is None else options.min_rating,
            float("inf") if options.max_rating is None else options.max_rating,
        )
    columns = CsvColumns(
        options.user_col,
        options.item_col,
        options.time_col,
        options.rating_col,
        options.event_type_col,
    )
    return import_events(
        path,
        columns,
        event_type=options.event_type,
        time_unit=options.time_unit,
        value_range=value_range,
        delimiter=options.delimiter,
        items_path=None if options.items is None else Path(options.items),
        users_path=None if options.users is None else Path(options.users),
    )


def _without_options(read: Callable[[Path], ImportBatch]) -> Importer:
    def importer(path: Path, options: EventFileOptions | None) -> ImportBatch:
        if options is not None:
            raise DataFileError("column options apply to csv imports only")
        return read(path)

    return importer


# Every kind of file an import reads; the CLI and the ingest flow both go through this table.
IMPORTERS: dict[str, Importer] = {
    "movielens": _without_options(import_movielens),
    "sequences": _without_options(import_sequences),
    "csv": _read_event_file,
}


def read_import(kind: str, path: Path, options: EventFileOptions | None = None) -> ImportBatch:
    """Read ``path`` with the importer of ``kind`` (see :data:`IMPORTERS`)."""
    importer = IMPORTERS.get(kind)
    if importer is None:
        raise DataFileError(f"unknown import kind {kind!r}; choose from: {', '.join(IMPORTERS)}")
    return importer(Path(path), options)
