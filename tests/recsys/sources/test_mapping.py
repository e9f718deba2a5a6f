"""Rows to events: times in a zone or as epoch numbers, rejects named after the source."""

from __future__ import annotations

from datetime import UTC, datetime

from recsys.sources.config import SourceConfig, parse_source
from recsys.sources.mapping import map_chunk
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
