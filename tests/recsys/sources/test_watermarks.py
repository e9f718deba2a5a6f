"""Watermarks go back to the source as the kind of value they came from, less the look-back."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa

from recsys.sources.watermarks import decode, encode, lower_bound, read_watermark, write_watermark


@pytest.mark.parametrize(
    "value",
    [7, 2.5, Decimal("10.25"), datetime(2026, 1, 1, 8), datetime(2026, 1, 1, 8, tzinfo=UTC),
     date(2026, 1, 1), "abc"],
)  # fmt: skip
def test_watermarks_round_trip(value: object) -> None:
    assert decode(*encode(value)) == value


def test_watermarks_lookback_keeps_the_layout() -> None:
    assert lower_bound(100, 10) == 90
    assert lower_bound(Decimal("1.5"), 0.5) == Decimal("1.0")
    assert lower_bound(datetime(2026, 1, 1, 8), 3600) == datetime(2026, 1, 1, 7)
    assert lower_bound("2026-01-01 08:00:00.000000", 1800) == "2026-01-01 07:30:00.000000"
    assert lower_bound("2026-01-01T08:00:00", 60) == "2026-01-01T07:59:00"
    assert lower_bound("order-17", 60) == "order-17"
    assert lower_bound(5, 0) == 5


def test_watermarks_of_another_column_are_ignored(store: sa.Engine) -> None:
    assert read_watermark(store, "views", "viewed_at") is None
    write_watermark(store, "views", "viewed_at", datetime(2026, 1, 1, 8))
    write_watermark(store, "views", "viewed_at", datetime(2026, 1, 1, 9))
    assert read_watermark(store, "views", "viewed_at") == datetime(2026, 1, 1, 9)
    assert read_watermark(store, "views", "id") is None
