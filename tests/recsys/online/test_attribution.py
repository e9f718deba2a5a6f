"""Attribution of events to impressions, and the online metrics read from it (SQLite and
PostgreSQL)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from recsys.db.events import Event, record_events
from recsys.online.attribution import attribute
from recsys.online.impressions import Impression, write_impressions
from recsys.online.metrics import compare, online_metrics, proportion

WINDOW = 10.0  # seconds

IMPRESSIONS = [
    Impression("1" * 32, "recommend", 1, ("a", "b", "c"), user_id="u1", shown_at=1_000),
    Impression("2" * 32, "recommend", 1, ("b", "d"), user_id="u1", shown_at=5_000),
    Impression(
        "3" * 32, "recommend_session", 2, ("e", "a"), session_id="s9", fallback="popular",
        shown_at=2_000,
    ),
    Impression("4" * 32, "recommend", 2, ("c",), user_id="u2", shown_at=1_000),
]  # fmt: skip
EVENTS = [
    Event("u1", "b", "click", occurred_at_ms=6_000),  # the later list that showed b: #2
    Event("u1", "c", "click", occurred_at_ms=3_000),  # #1, rank 3
    Event("u1", "a", "click", occurred_at_ms=6_001, recommendation_id="1" * 32),  # named
    Event("u1", "e", "click", occurred_at_ms=6_000),  # never shown to u1
    Event("s9", "a", "purchase", occurred_at_ms=2_500),  # the session's list, rank 2
    Event("u2", "c", "click", occurred_at_ms=11_001),  # outside the window
    Event("u1", "b", "click", occurred_at_ms=500),  # before any list
    Event("u2", "a", "click", occurred_at_ms=1_100, recommendation_id="4" * 32),  # not in #4
]


def _attributions(engine: sa.Engine) -> set[tuple[str, str, str, int, bool]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT u.external_id, i.external_id, a.impression_id, a.rank, a.named "
                "FROM attributions a JOIN interactions e ON e.id = a.interaction_id "
                "JOIN users u ON u.id = e.user_id JOIN items i ON i.id = e.item_id"
            )
        ).all()
    return {(u, i, rid[0], int(rank), bool(named)) for u, i, rid, rank, named in rows}


@pytest.fixture
def logged(engine: sa.Engine) -> sa.Engine:
    write_impressions(engine, IMPRESSIONS)
    record_events(engine, EVENTS)
    with engine.begin() as conn:  # shown, never used: in the catalogue all the same
        conn.execute(sa.text("INSERT INTO items (external_id) VALUES ('d')"))
    return engine


def test_events_are_credited_to_the_list_they_name_or_the_latest_that_showed_them(
    logged: sa.Engine,
) -> None:
    result = attribute(logged, window_seconds=WINDOW)
    assert (result.events, result.attributed, result.named) == (8, 4, 1)
    assert _attributions(logged) == {
        ("u1", "b", "2", 1, False),
        ("u1", "c", "1", 3, False),
        ("u1", "a", "1", 1, True),
        ("s9", "a", "3", 2, False),
    }
    # Derived, so recomputable: the same again, and a shorter window applies to the past.
    attribute(logged, window_seconds=WINDOW)
    assert len(_attributions(logged)) == 4
    attribute(logged, window_seconds=1.5)
    assert _attributions(logged) == {
        ("u1", "b", "2", 1, False),
        ("u1", "a", "1", 1, True),
        ("s9", "a", "3", 2, False),
    }  # c came 2 s after its list
    with logged.connect() as conn:  # events stay events
        assert conn.execute(sa.text("SELECT count(*) FROM interactions")).scalar_one() == 8


def test_online_metrics_per_version_with_intervals(logged: sa.Engine) -> None:
    attribute(logged, window_seconds=WINDOW)
    groups = {
        g.model_version: g
        for g in online_metrics(logged, click_events=["click"], conversion_events=["purchase"])
    }
    one, two = groups[1], groups[2]
    assert (one.impressions, two.impressions) == (2, 2)
    assert one.ctr.value == 1.0 and one.mrr.value == 1.0 and one.conversion.value == 0.0
    assert one.coverage.value == pytest.approx(4 / 5)  # a, b, c, d of a, b, c, d, e
    assert two.ctr.value == 0.0 and two.conversion.value == 0.5
    assert two.fallback_share.value == 0.5 and one.fallback_share.value == 0.0
    for estimate in (one.ctr, two.conversion, two.fallback_share):
        assert estimate.low is not None and estimate.high is not None
        assert 0.0 <= estimate.low <= estimate.value <= estimate.high <= 1.0  # type: ignore[operator]
    report = one.report()
    assert set(report) >= {"ctr@10", "conversion@10", "mrr", "coverage", "fallback_share"}
    at_two = online_metrics(logged, click_events=["click"], conversion_events=["purchase"], k=2)
    assert {g.model_version: g.ctr.value for g in at_two}[1] == 1.0  # a (rank 1), b (rank 1)
    at_one = online_metrics(
        logged, click_events=["click"], conversion_events=["purchase"], since_ms=4_000
    )
    assert [(g.model_version, g.impressions) for g in at_one] == [(1, 1)]


def test_intervals_and_the_two_arm_comparison() -> None:
    none = proportion(0, 10)
    assert none.value == 0.0 and none.low == 0.0 and none.high == pytest.approx(0.2775, abs=1e-4)
    better = compare("ctr", 100, 1000, 150, 1000)
    assert better.diff == pytest.approx(0.05)
    assert better.ci_low is not None and better.ci_low > 0 and better.p_value < 0.01  # type: ignore[operator]
    same = compare("ctr", 100, 1000, 100, 1000)
    assert same.diff == 0 and same.p_value == pytest.approx(1.0)
    assert compare("ctr", 0, 0, 1, 10).p_value is None


def test_recent_metrics_feed_the_retrain_report(logged: sa.Engine) -> None:
    from recsys.online.metrics import recent_online_metrics, summary_row
    from recsys.retrain import RetrainSummary, add_online, render_report

    groups = recent_online_metrics(
        logged,
        click_events=["click"],
        conversion_events=["purchase"],
        window_seconds=WINDOW,
        days=1,
        now_ms=20_000,
    )
    rows = [summary_row(g) for g in groups]
    assert [(r["version"], r["impressions"]) for r in rows] == [(1, 2), (2, 2)]
    assert rows[0]["ctr@10"].startswith("1.0000 [")
    report = render_report(RetrainSummary("kept", "no better", online=rows), None, None)
    assert "## Online metrics of the served versions (last 7 days, 95% intervals)" in report
    assert "| version | arm | impressions | ctr@10 |" in report
    # Today's last 7 days hold none of these 1970 impressions: nothing to show.
    kept = add_online(
        logged,
        RetrainSummary("kept", "no better"),
        click_events=["click"],
        conversion_events=["purchase"],
        window_seconds=WINDOW,
    )
    assert kept.online == [] and "## Online" not in render_report(kept, None, None)
    broken = sa.create_engine("sqlite:////nonexistent/folder/db.sqlite")
    same = RetrainSummary("kept", "no better")
    assert (
        add_online(
            broken, same, click_events=["click"], conversion_events=["purchase"], window_seconds=1
        )
        is same
    )  # measuring failed: the retrain goes on without it


def test_attributions_read_only_give_the_metrics_the_table_gives(logged: sa.Engine) -> None:
    """A reader that may not write (the dashboard) computes the same numbers in memory."""
    from recsys.online.attribution import attributions

    found = attributions(logged, window_seconds=WINDOW)
    assert _attributions(logged) == set()  # nothing written
    assert len(found) == 4 and int(found["named"].sum()) == 1
    kinds = {"click_events": ["click"], "conversion_events": ["purchase"]}
    in_memory = online_metrics(logged, **kinds, attributed=found)
    attribute(logged, window_seconds=WINDOW)
    stored = online_metrics(logged, **kinds)
    assert [g.report() for g in in_memory] == [g.report() for g in stored]
    later = online_metrics(logged, **kinds, since_ms=4_000, attributed=found)
    assert [g.report() for g in later] == [
        g.report() for g in online_metrics(logged, **kinds, since_ms=4_000)
    ]


def test_rates_over_time_split_the_same_counts_by_period(logged: sa.Engine) -> None:
    from recsys.online.attribution import attributions
    from recsys.online.metrics import rates_over_time

    found = attributions(logged, window_seconds=WINDOW)
    kinds = {"click_events": ["click"], "conversion_events": ["purchase"]}
    points = rates_over_time(logged, **kinds, since_ms=0, period_ms=3_000, attributed=found)
    assert [(p.period_start_ms, p.model_version, p.impressions) for p in points] == [
        (0, 1, 1),  # #1 at 1 s
        (0, 2, 2),  # #3 at 2 s, #4 at 1 s
        (3_000, 1, 1),  # #2 at 5 s
    ]
    assert [p.ctr.value for p in points] == [1.0, 0.0, 1.0]
    assert points[1].conversion.value == 0.5 and points[1].conversion.low is not None
    attribute(logged, window_seconds=WINDOW)
    assert points == rates_over_time(logged, **kinds, since_ms=0, period_ms=3_000)
    totals = {g.model_version: g.impressions for g in online_metrics(logged, **kinds)}
    assert totals == {1: 2, 2: 2}
    # Periods start at multiples of the period, whatever the range's start.
    late = rates_over_time(logged, **kinds, since_ms=1_500, period_ms=3_000, attributed=found)
    assert [(p.period_start_ms, p.model_version, p.impressions) for p in late] == [
        (0, 2, 1),  # #3 at 2 s
        (3_000, 1, 1),
    ]
    with pytest.raises(ValueError, match="period_ms"):
        rates_over_time(logged, **kinds, since_ms=0, period_ms=0)


def test_coverage_resamples_count_the_distinct_items_of_the_lists_they_pick() -> None:
    """The gathered resamples count what a list-by-list count of the same picks counts."""
    import numpy as np

    from recsys.online.metrics import COVERAGE_RESAMPLES, MAX_COVERAGE_SAMPLE, coverage

    rng = np.random.default_rng(3)
    lists = [
        [f"i{j}" for j in rng.choice(300, size=int(rng.integers(0, 12)), replace=False)]
        for _ in range(500)
    ]
    found = coverage(lists, catalogue=400, seed=11)
    every = {item for shown in lists for item in shown}
    assert found.value == len(every) / 400 and found.n == 500

    picks = np.random.default_rng(11)
    counts = []
    for _ in range(COVERAGE_RESAMPLES):
        picked = picks.integers(0, len(lists), size=min(len(lists), MAX_COVERAGE_SAMPLE))
        counts.append(len({item for j in picked for item in lists[j]}))
    spread = np.asarray(counts, dtype=np.float64) - float(np.mean(counts))
    low, high = np.percentile(spread, [2.5, 97.5]) / 400 + len(every) / 400
    assert (found.low, found.high) == pytest.approx((max(0.0, low), min(1.0, high)))
    assert coverage([[], []], catalogue=10).value == 0.0
