"""Drift signals of recent traffic against the champion's training (SQLite and PostgreSQL)."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from recsys.config import get_settings
from recsys.online.attribution import attribute
from recsys.online.drift import Drift, Thresholds, drift_signals, population_stability, windows
from recsys.registry import RegistryError

from .conftest import HOUR_MS, NOW_MS, Champion, traffic

WINDOW_S = 3_600.0
BASELINE_S = 86_400.0
THRESHOLDS = Thresholds(min_samples=100)


def check(engine: sa.Engine, thresholds: Thresholds = THRESHOLDS) -> Drift:
    _, baseline_since = windows(NOW_MS, WINDOW_S, BASELINE_S)
    attribute(engine, window_seconds=600, since_ms=baseline_since, until_ms=NOW_MS)
    return drift_signals(
        engine,
        window_seconds=WINDOW_S,
        baseline_seconds=BASELINE_S,
        thresholds=thresholds,
        click_events=["click"],
        conversion_events=["purchase"],
        now_ms=NOW_MS,
    )


def values(drift: Drift) -> dict[str, float | None]:
    return {s.name: s.value for s in drift.signals}


def baseline(champion: Champion, ctr: float = 0.3) -> None:
    """A day of ordinary traffic before the recent hour."""
    traffic(champion, start_ms=NOW_MS - 25 * HOUR_MS, end_ms=NOW_MS - HOUR_MS, lists=400,
            ctr=ctr, seed=1, tag="b")  # fmt: skip


def test_ordinary_traffic_trips_nothing(champion: Champion) -> None:
    baseline(champion)
    traffic(champion, start_ms=NOW_MS - HOUR_MS, end_ms=NOW_MS, lists=400, ctr=0.3,
            background=300, seed=2, tag="r")  # fmt: skip
    drift = check(champion.engine)
    assert drift.champion == champion.version and drift.snapshot_at
    assert [s.name for s in drift.signals] == [
        "unknown_users_requests",
        "unknown_users_events",
        "unknown_items_events",
        "new_items",
        "popularity_psi",
        "ctr_drop",
    ]
    assert drift.tripped == [], [s.report() for s in drift.tripped]
    got = values(drift)
    assert got["unknown_users_requests"] == 0 and got["unknown_items_events"] == 0
    assert got["new_items"] == 0
    psi = got["popularity_psi"]
    assert psi is not None and psi < 0.1
    by_name = {s.name: s for s in drift.signals}
    assert by_name["ctr_drop"].n == 400 and by_name["unknown_users_requests"].n == 400
    assert "ctr@10" in by_name["ctr_drop"].detail


def test_a_quiet_hour_trips_nothing_even_when_it_is_all_strangers(champion: Champion) -> None:
    baseline(champion)
    strangers = [f"stranger-{n}" for n in range(30)]
    traffic(champion, start_ms=NOW_MS - HOUR_MS, end_ms=NOW_MS, lists=30, ctr=0.0,
            users=strangers, background=20, seed=3, tag="q")  # fmt: skip
    drift = check(champion.engine)
    assert values(drift)["unknown_users_requests"] == 1.0
    assert drift.tripped == []
    requests = next(s for s in drift.signals if s.name == "unknown_users_requests")
    assert "cannot trip" in requests.detail


def test_many_unknown_users_trip_that_signal(champion: Champion) -> None:
    baseline(champion)
    strangers = [f"newcomer-{n}" for n in range(300)]
    traffic(champion, start_ms=NOW_MS - HOUR_MS, end_ms=NOW_MS, lists=300, ctr=0.3,
            users=strangers, background=200, seed=4, tag="u")  # fmt: skip
    traffic(champion, start_ms=NOW_MS - HOUR_MS, end_ms=NOW_MS, lists=100, ctr=0.3,
            background=50, seed=5, tag="k")  # fmt: skip
    drift = check(champion.engine)
    tripped = {s.name for s in drift.tripped}
    assert tripped == {"unknown_users_requests", "unknown_users_events"}
    assert values(drift)["unknown_users_requests"] == pytest.approx(0.75)


def test_a_shifted_item_distribution_trips_the_psi(champion: Champion) -> None:
    baseline(champion)
    p = champion.popularity()
    tail = np.zeros_like(p)
    rarest = np.argsort(p, kind="stable")[:15]  # the least popular known items
    tail[rarest] = 1.0 / len(rarest)
    traffic(champion, start_ms=NOW_MS - HOUR_MS, end_ms=NOW_MS, lists=0, ctr=0.0,
            item_p=tail, background=400, seed=6)  # fmt: skip
    drift = check(champion.engine)
    assert [s.name for s in drift.tripped] == ["popularity_psi"]
    psi = values(drift)["popularity_psi"]
    assert psi is not None and psi > 1.0


def test_new_items_in_the_catalogue_and_events_on_them_trip(champion: Champion) -> None:
    baseline(champion)
    fresh = [f"fresh-{n}" for n in range(40)]
    traffic(champion, start_ms=NOW_MS - HOUR_MS, end_ms=NOW_MS, lists=0, ctr=0.0,
            items=fresh, item_p=np.full(40, 1 / 40), background=300, seed=7)  # fmt: skip
    drift = check(champion.engine)
    assert {s.name for s in drift.tripped} == {"unknown_items_events", "new_items"}
    got = values(drift)
    assert got["unknown_items_events"] == 1.0
    with champion.engine.connect() as conn:
        available = conn.execute(sa.text("SELECT count(*) FROM items")).scalar_one()
    assert got["new_items"] == pytest.approx(40 / available)
    # Unavailable items are not in the catalogue a model could serve.
    with champion.engine.begin() as conn:
        conn.execute(sa.text("UPDATE items SET available = false WHERE external_id LIKE 'fresh-%'"))
    assert values(check(champion.engine))["new_items"] == 0


def test_a_significant_click_through_drop_trips(champion: Champion) -> None:
    baseline(champion, ctr=0.4)
    traffic(champion, start_ms=NOW_MS - HOUR_MS, end_ms=NOW_MS, lists=400, ctr=0.1,
            seed=8, tag="d")  # fmt: skip
    drift = check(champion.engine)
    assert [s.name for s in drift.tripped] == ["ctr_drop"]
    signal = drift.tripped[0]
    assert signal.value is not None and 0.6 < signal.value < 0.85
    assert signal.facts["ci_high"] < 0 and signal.facts["n_a"] == 400
    # The same fall is not enough when the threshold asks for more.
    assert check(champion.engine, Thresholds(min_samples=100, ctr_drop=0.9)).tripped == []


def test_a_click_through_drop_within_chance_over_many_runs_does_not_trip(
    champion: Champion,
) -> None:
    """A fall past the threshold that a 95% test calls significant but the monitor's stricter
    level does not: the wobble that a monitor testing every 15 minutes would otherwise meet."""
    baseline(champion, ctr=0.3)
    traffic(champion, start_ms=NOW_MS - HOUR_MS, end_ms=NOW_MS, lists=400, ctr=0.22,
            seed=9, tag="w")  # fmt: skip
    signal = next(s for s in check(champion.engine).signals if s.name == "ctr_drop")
    assert signal.value is not None and signal.value > THRESHOLDS.ctr_drop
    assert 0.001 < signal.facts["p_value"] < 0.05 and signal.facts["ci_high"] < 0
    assert not signal.tripped and "not significant at p < 0.001" in signal.detail
    looser = Thresholds(min_samples=THRESHOLDS.min_samples, ctr_alpha=0.05)
    assert [s.name for s in check(champion.engine, looser).tripped] == ["ctr_drop"]


def test_attributions_computed_in_memory_give_the_same_signals(champion: Champion) -> None:
    """A reader that may not write (the dashboard) passes the attributions it computed."""
    from recsys.db.schema import attributions_table
    from recsys.online.attribution import attributions

    baseline(champion, ctr=0.4)
    traffic(champion, start_ms=NOW_MS - HOUR_MS, end_ms=NOW_MS, lists=400, ctr=0.1,
            seed=8, tag="d")  # fmt: skip
    stored = check(champion.engine)
    with champion.engine.begin() as conn:
        conn.execute(sa.delete(attributions_table))
    _, baseline_since = windows(NOW_MS, WINDOW_S, BASELINE_S)
    found = attributions(
        champion.engine, window_seconds=600, since_ms=baseline_since, until_ms=NOW_MS
    )
    in_memory = drift_signals(
        champion.engine,
        window_seconds=WINDOW_S,
        baseline_seconds=BASELINE_S,
        thresholds=THRESHOLDS,
        click_events=["click"],
        conversion_events=["purchase"],
        now_ms=NOW_MS,
        attributed=found,
    )
    assert in_memory.report() == stored.report()
    with champion.engine.connect() as conn:
        count = sa.select(sa.func.count()).select_from(attributions_table)
        assert conn.execute(count).scalar() == 0  # nothing written


def test_no_champion_is_a_clear_error(engine: sa.Engine) -> None:
    with pytest.raises(RegistryError, match="no champion"):
        check(engine)


def test_population_stability_index() -> None:
    counts = np.array([50, 30, 10, 5, 5, 0], dtype=np.float64)
    same = np.repeat(np.arange(6), counts.astype(int))
    psi, shares = population_stability(counts, same, bins=4)
    assert psi == pytest.approx(0.0, abs=1e-12)
    assert sum(t for t, _ in shares) == pytest.approx(1.0)
    shifted = np.array([4] * 50 + [5] * 50)  # all on the tail
    psi, _ = population_stability(counts, shifted, bins=4)
    assert psi is not None and psi > 2
    assert population_stability(counts, np.array([], dtype=np.int64)) == (None, [])


def test_thresholds_come_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_DRIFT_PSI", "0.25")
    monkeypatch.setenv("RECSYS_DRIFT_MIN_SAMPLES", "50")
    monkeypatch.setenv("RECSYS_DRIFT_CTR_ALPHA", "0.01")
    t = Thresholds.from_settings(get_settings())
    assert (t.psi, t.min_samples, t.unknown_users, t.ctr_alpha) == (0.25, 50, 0.3, 0.01)
