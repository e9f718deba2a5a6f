"""Rows to events: times in a zone or as epoch numbers, rejects named after the source."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from recsys.data.frames import ImportBatch
from recsys.data.readers import build_events
from recsys.sources.config import SourceConfig, parse_source
from recsys.sources.mapping import _time_text, map_chunk, time_texts
from recsys.sources.reader import Chunk

COLUMNS = ("uid", "sku", "at")


def _source(**events: object) -> SourceConfig:
    body = {"user": "uid", "item": "sku", "time": "at"} | events
    return parse_source("clicks", {"url": "sqlite://", "table": "t", "events": body})


def test_mapping_times_without_offset_are_read_in_the_zone() -> None:
    source = _source(time_zone="America/New_York")
    rows = [
        (1, "a", datetime(2026, 7, 1, 8, 0)),
        (2, "b", "2026-07-01 08:00:00"),
        (3, "c", datetime(2026, 7, 1, 12, 0, tzinfo=UTC)),
        (4, "d", "yesterday"),
    ]
    batch = map_chunk(source, Chunk(COLUMNS, rows, 10, None))
    noon = int(datetime(2026, 7, 1, 12, 0, tzinfo=UTC).timestamp() * 1000)
    assert batch.interactions["occurred_at"].tolist() == [noon, noon, noon]
    assert batch.interactions["user_id"].tolist() == ["1", "2", "3"]
    (reject,) = batch.rejects
    assert (reject.file, reject.line, reject.reason) == ("clicks", 13, "bad_timestamp")
    assert '"at": "yesterday"' in reject.raw


def test_mapping_epoch_times_in_the_declared_unit() -> None:
    rows = [(1, "a", 1_767_225_600), (2, "b", 1_767_225_600_000)]
    seconds = map_chunk(_source(time_unit="s"), Chunk(COLUMNS, rows[:1], 1, None))
    millis = map_chunk(_source(time_unit="ms"), Chunk(COLUMNS, rows[1:], 1, None))
    assert seconds.interactions["occurred_at"].tolist() == [1_767_225_600_000]
    assert millis.interactions["occurred_at"].tolist() == [1_767_225_600_000]


def _row_by_row(source: SourceConfig, chunk: Chunk) -> ImportBatch:
    """The mapping as it was before columns were converted at once: text per row."""
    spec = source.events
    assert spec is not None
    zone = ZoneInfo(spec.time_zone)
    columns = {name: [row[i] for row in chunk.rows] for i, name in enumerate(chunk.columns)}
    events, rejects = build_events(
        file=source.name,
        users=pd.Series(columns[spec.user], dtype=object),
        items=pd.Series(columns[spec.item], dtype=object),
        times=pd.Series([_time_text(v, zone) for v in columns[spec.time]], dtype=object),
        values=None,
        event_types=spec.event_type,
        lines=np.arange(chunk.first_row, chunk.first_row + len(chunk.rows)),
        raw=[json.dumps(dict(zip(COLUMNS, row, strict=True)), default=str) for row in chunk.rows],
        time_unit=spec.time_unit,
    )
    return ImportBatch(kind="source", source=source.name, interactions=events, rejects=rejects)


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "Australia/Lord_Howe"])
def test_mapping_a_column_of_naive_times_at_once_matches_row_by_row(zone: str) -> None:
    times = [
        datetime(2026, 3, 29, 1, 59, 59, 999_999),
        datetime(2026, 3, 29, 2, 30),  # a gap in Berlin
        datetime(2026, 10, 25, 2, 30),  # a fold in Berlin
        datetime(2026, 10, 4, 2, 15),  # a half-hour gap on Lord Howe
        datetime(1969, 12, 31, 23, 59, 59, 999_500),
        datetime(1970, 1, 1, 0, 0, 0, 500),
        datetime(2026, 7, 1, 8, 0, 0, 123_456),
        datetime(9999, 12, 31, 23, 59, 59),
        datetime(1, 1, 1),
        None,
    ]
    clean = [at for at in times if at is None or (1900 < at.year < 2200 and not _shifted(at, zone))]
    at_once = time_texts(pd.Series(clean, dtype=object), ZoneInfo(zone))
    assert isinstance(at_once.dtype, pd.DatetimeTZDtype)
    source = _source(time_zone=zone)
    for column in (times, clean):  # with a gap or fold of the zone, row by row
        chunk = Chunk(COLUMNS, [(i, f"s{i}", at) for i, at in enumerate(column)], 5, None)
        fast, slow = map_chunk(source, chunk), _row_by_row(source, chunk)
        pd.testing.assert_frame_equal(fast.interactions, slow.interactions)
        assert fast.rejects == slow.rejects


def _shifted(at: datetime, zone: str) -> bool:
    """Whether ``at`` falls in a fold or gap of ``zone`` (its two readings differ)."""
    tz = ZoneInfo(zone)
    return at.replace(tzinfo=tz).utcoffset() != at.replace(tzinfo=tz, fold=1).utcoffset()
