"""Quality report: each check counted on data whose answer is known."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from recsys.data.extract import IdMap, Snapshot, SnapshotDescriptor
from recsys.data.validation import QualityThresholds, gini, quality_report

NOW = datetime(2025, 1, 1, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)


def _snapshot(
    users: list[int], items: list[int], times: list[int], values: list[float]
) -> Snapshot:
    n = len(users)
    descriptor = SnapshotDescriptor("sqlite", "", None, n, 0, 0, 0, 0, {}, None, None, None, "")
    return Snapshot(
        user_idx=np.array(users, np.int32),
        item_idx=np.array(items, np.int32),
        occurred_at=np.array(times, np.int64),
        value=np.array(values, np.float32),
        event=np.zeros(n, np.int16),
        event_types=("view",),
        users=IdMap.from_ids([f"u{i}" for i in range(1, 5)]),
        items=IdMap.from_ids([f"i{i}" for i in range(1, 5)]),
        descriptor=descriptor,
        out_of_order=2,
        orphans=0,
    )


def test_quality_report_counts_each_check() -> None:
    snap = _snapshot(
        users=[1, 1, 1, 2, 2, 3],
        items=[1, 1, 2, 1, 3, 1],
        times=[0, 10, 20, NOW_MS + 1, 5, 6],
        values=[5, 5, 3, np.nan, 1, np.nan],
    )
    report = quality_report(snap, QualityThresholds(min_user_interactions=3), now=NOW)
    assert report.interactions == 6
    assert report.duplicates == 1  # user 1 viewed item 1 twice
    assert report.users_below_min == 2  # users 2 and 3 have fewer than 3 events
    assert report.users_without_events == 1  # user 4
    assert report.items_without_events == 1  # item 4
    assert report.items_below_min == 3
    assert report.future_timestamps == 1
    assert report.zero_timestamps == 1
    assert report.out_of_order == 2
    assert report.rating_distribution == {"1": 1, "3": 1, "5": 2}
    assert report.popularity["top1pct_share"] == pytest.approx(4 / 6)
    codes = {f.code for f in report.findings}
    assert {"future_timestamps", "zero_timestamps", "duplicates", "out_of_order"} <= codes
    assert report.ok  # warnings only
    assert "| future timestamps | 1 |" in report.to_markdown()


def test_quality_report_empty_snapshot_is_an_error() -> None:
    report = quality_report(_snapshot([], [], [], []), now=NOW)
    assert not report.ok
    assert [f.code for f in report.errors] == ["no_interactions"]


def test_gini_equal_and_concentrated() -> None:
    assert gini(np.array([5, 5, 5, 5])) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 10])) == pytest.approx(0.75)  # (n-1)/n for one holder
    assert gini(np.array([1, 3])) == pytest.approx(0.25)  # textbook: mean abs diff / (2 * mean)
