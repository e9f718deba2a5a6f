"""The experiment simulator: its world (preferences, history, clicks, shift), its client
against a stub, its statistics, and one tiny run against a real service."""

from __future__ import annotations

import json
import math
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import _common
import simdrift
import simulate
from simworld import World, WorldConfig

SMALL = WorldConfig(num_users=60, num_items=40, history_mean=8.0, seed=4)


def test_the_same_seed_gives_the_same_world_and_histories() -> None:
    a, b = World(SMALL), World(SMALL)
    assert np.array_equal(a.item_vectors, b.item_vectors)
    assert all(np.array_equal(x, y) for x, y in zip(a.histories(), b.histories(), strict=True))
    other = World(WorldConfig(num_users=60, num_items=40, history_mean=8.0, seed=5))
    assert not np.array_equal(a.item_vectors, other.item_vectors)


def test_histories_follow_preferences_and_import_as_past_events() -> None:
    world = World(WorldConfig(num_users=300, num_items=60, history_mean=10.0, seed=1))
    histories = world.histories()
    assert all(len(set(h.tolist())) == len(h) >= world.config.history_min for h in histories)
    # A user's history items are ones they like: above-average utility on the whole.
    lift = [world.utility(u)[h].mean() - world.utility(u).mean() for u, h in enumerate(histories)]
    assert np.mean(lift) > 1.0
    batch = world.import_batch(now_ms=10**13)
    frame = batch.interactions
    assert len(frame) == sum(len(h) for h in histories) == batch.rows_read
    assert frame["occurred_at"].max() < 10**13 and set(frame["event_type"]) == {"interaction"}
    assert set(batch.items["item_id"]) == set(world.item_ids)


def test_clicks_follow_the_position_based_model() -> None:
    world = World(SMALL)
    user, items = world.user_ids[0], world.item_ids[:10]
    p = world.click_probabilities(user, items)
    z = SMALL.click_offset + SMALL.click_scale * world.utility(0, np.arange(10))
    assert np.allclose(p, np.arange(1, 11) ** -SMALL.position_decay / (1 + np.exp(-z)))
    # The same item is clicked less the lower it is shown.
    reversed_p = world.click_probabilities(user, items[::-1])
    decay = 10.0**SMALL.position_decay
    assert reversed_p[0] == pytest.approx(p[-1] * decay)
    assert reversed_p[-1] == pytest.approx(p[0] / decay)
    rng = np.random.default_rng(0)
    draws = 20_000
    clicked = sum(bool(world.clicks(user, items, rng)) for _ in range(draws))
    expected = world.expected_ctr(user, items)
    assert abs(clicked / draws - expected) < 4 * math.sqrt(expected * (1 - expected) / draws)
    assert world.clicks(user, [], rng) == [] and world.expected_ctr(user, []) == 0.0


def test_shift_permutes_some_items_vectors_and_nothing_else() -> None:
    world = World(SMALL)
    before = world.item_vectors.copy()
    bias = world.item_bias.copy()
    moved = world.shift(0.5, seed=3)
    assert len(moved) == 20 and world.shifts == 1
    index = [world.item_ids.index(i) for i in moved]
    kept = sorted(set(range(SMALL.num_items)) - set(index))
    assert np.array_equal(world.item_vectors[kept], before[kept])
    assert not np.any(np.all(world.item_vectors[index] == before[index], axis=1))
    rows = sorted(map(tuple, world.item_vectors[index]))
    assert rows == sorted(map(tuple, before[index]))  # the same vectors, other items
    assert np.array_equal(world.item_bias, bias)
    assert world.shift(0.0, seed=1) == [] and world.shifts == 1
    with pytest.raises(ValueError, match="fraction"):
        world.shift(1.5, seed=1)


def test_the_driver_names_each_answer_in_its_clicks_and_calls_the_hook_between_windows() -> None:
    world = World(SMALL)
    in_flight, seen_windows = [0], []
    lock = threading.Lock()
    posted: list[dict[str, Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if request.url.path == "/events":
            with lock:
                posted.extend(body["events"])
            return httpx.Response(200, json={"inserted": len(body["events"]), "duplicates": 0})
        with lock:
            in_flight[0] += 1
        rid = uuid.uuid4().hex
        best = world.best_items(body["user_id"], body["k"])
        with lock:
            in_flight[0] -= 1
        arm = "challenger" if body["user_id"].endswith(("1", "3", "5")) else "champion"
        return httpx.Response(
            200,
            json={
                "recommendation_id": rid,
                "arm": arm,
                "model_version": 1,
                "items": [{"item_id": i} for i in best],
            },
        )

    def hook(window: int, hooked: World) -> None:
        assert hooked is world and in_flight[0] == 0
        seen_windows.append(window)

    driver = simulate.Driver(
        "http://stub",
        "secret",
        world,
        k=5,
        threads=3,
        window=7,
        before_window=hook,
        transport=httpx.MockTransport(answer),
    )
    try:
        shown = driver.run(30, seed=2)
        again = driver.run(30, seed=2)
    finally:
        driver.close()
    assert seen_windows == [0, 1, 2, 3, 4] * 2
    assert [s.index for s in shown] == list(range(30))
    assert [(s.user_id, s.clicks) for s in shown] == [(s.user_id, s.clicks) for s in again]
    assert sum(len(s.clicks) for s in shown) > 0  # the oracle's lists get clicked
    by_id = {s.recommendation_id: s for s in shown}
    for event in posted[: sum(len(s.clicks) for s in shown)]:
        assert event["event_type"] == "click"
        assert event["item_id"] in by_id[event["recommendation_id"]].clicks


def test_browse_picks_unseen_items_by_current_taste_and_follows_a_shift() -> None:
    world = World(WorldConfig(num_users=50, num_items=30, seed=3))
    rng = np.random.default_rng(0)
    user = world.user_ids[0]
    picks = [world.browse(user, set(), rng) for _ in range(400)]
    utility = world.utility(0)
    favourite = world.item_ids[int(np.argmax(utility))]
    least = world.item_ids[int(np.argmin(utility))]
    assert picks.count(favourite) > picks.count(least)
    assert world.browse(user, {favourite}, rng) != favourite
    assert world.browse(user, set(world.item_ids), rng) is None
    # After a shift the softmax follows the new vectors.
    world.shift(1.0, seed=1)
    after = world.item_ids[int(np.argmax(world.utility(0)))]
    assert [world.browse(user, set(), rng) for _ in range(400)].count(after) > 10


def test_the_drift_report_splits_the_run_at_the_shift_and_the_new_champion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = simulate.parse_args(["--drift", "--quick", "--shift-fraction", "0.5"])
    plan = simdrift.plan_for(args)
    assert (
        args.drift
        and plan.fraction == 0.5
        and plan == simdrift.QUICK.__class__(**{**simdrift.QUICK.report(), "fraction": 0.5})
    )

    def window(n: int, clicked: int, version: int) -> simdrift.Window:
        # The new champion's lists are worth 0.02 to 0.04 more than the old one's would be.
        old, gains = (0.1, [0.0] * 100) if version == 1 else (0.07, [0.02, 0.04] * 50)
        return simdrift.Window(
            n, 2.0 * n, 2.0 * n + 1, 100, clicked, 0.1, 0.3, old, gains, {version: 100}, 50, []
        )

    windows = [
        window(n, clicked, v)
        for n, (clicked, v) in enumerate([(20, 1), (20, 1), (8, 1), (10, 1), (15, 2), (16, 2)])
    ]
    outcome = {
        "windows": [w.report() for w in windows],
        "marks": {"shift": 4.0, "trip": 5.5, "retrain start": 6.0, "retrain done": 7.5,
                  "served": 8.0},
        "checks": [
            {"at_s": 5.5, "took_s": 5.0, "action": "started", "tripped": ["ctr_drop"],
             "reason": "", "retrain_run_id": "r",
             "signals": {"ctr_drop": {"value": 0.5, "n": 200, "tripped": True, "detail": ""}}},
        ],
        "retrain": {"run_id": "r", "state": "COMPLETED", "verdict": "v2 promoted",
                    "champion_after": 2, "promoted": True},
        "moved_items": 20,
        "new_champion": 2,
        "champion_before": 1,
        "l2_sweep": [
            {"l2": 30.0, "chosen": False, "valid_ndcg@10": 0.06, "recent_ndcg@10": 0.05,
             "expected_ctr@10": 0.19, "measured_ctr@10": 0.17},
            {"l2": 2400.0, "chosen": True, "valid_ndcg@10": 0.07, "recent_ndcg@10": 0.08,
             "expected_ctr@10": 0.14, "measured_ctr@10": 0.13},
        ],
    }  # fmt: skip
    plan = simdrift._replace(plan, shift_at=2)
    rows = simdrift.summary_rows(outcome, plan)
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("before the shift", "2", "200"),
        ("after the shift, old champion", "2", "200"),
        ("new champion", "2", "200"),
    ]
    assert rows[0][3].startswith("20.0%") and rows[1][3].startswith("9.0%")
    monkeypatch.setattr(_common, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(simdrift, "RESULTS_DIR", tmp_path)
    world = World(SMALL)
    simdrift.report(args, plan, {"machine": "test"}, world, {}, outcome, {"total": 1.0})
    report = json.loads((tmp_path / "simulate-drift-smoke.json").read_text())
    assert report["marks"]["served"] == 8.0 and report["stretches"][2]["windows"] == 2
    assert report["stretches"][2]["old_champion"] == "7.0%"
    paired = report["recovery"]["paired"]
    assert paired["requests"] == 200 and abs(paired["mean_gain"] - 0.03) < 1e-9
    assert paired["ci_low"] > 0 and report["recovery"]["better"] is True
    assert report["recovery"]["observed"]["b"] == 31 / 200
    text = (tmp_path / "simulate-drift-smoke.md").read_text()
    assert "monitor tripped" not in text or "ctr_drop" in text
    assert "| 0.500 (200) tripped |" in text and "| shift -> served | 4.0 |" in text
    assert "better than the old champion: expected CTR of its lists 10.0% vs" in text
    assert "| 2400 (chosen) | 0.0700 | 0.0800 | 14.0% | 13.0% |" in text
    assert report["l2_sweep"][0]["l2"] == 30.0
    assert (tmp_path / "simulate-drift-smoke-ctr.png").stat().st_size > 0


def test_power_and_the_user_level_test_agree_with_the_textbook() -> None:
    assert simulate.power(0.2, 0.2, 1000, 1000) == pytest.approx(0.05, abs=1e-9)
    assert simulate.power(0.20, 0.12, 1000, 1000) > 0.99
    n = simulate.requests_for_power(0.20, 0.12, 0.8, 0.5)
    assert n is not None and simulate.power(0.20, 0.12, n // 2, n // 2) == pytest.approx(
        0.8, abs=0.01
    )
    # Each user once: the user-level test is the unpooled two-proportion test.
    shown = [
        simulate.Shown(
            n,
            f"u{n}",
            "champion" if n % 2 else "challenger",
            1,
            "r",
            ["i1"],
            ["i1"] if n % 5 == 0 else [],
            0,
            0.0,
        )
        for n in range(400)
    ]
    result = simulate.user_level_test(shown)
    a = [bool(s.clicks) for s in shown if s.arm == "champion"]
    b = [bool(s.clicks) for s in shown if s.arm == "challenger"]
    pa, pb = np.mean(a), np.mean(b)
    se = math.sqrt(pa * (1 - pa) / (len(a) - 1) + pb * (1 - pb) / (len(b) - 1))
    assert result["diff"] == pytest.approx(pb - pa, abs=1e-6)
    assert result["p_value"] == pytest.approx(math.erfc(abs(pb - pa) / se / math.sqrt(2)), abs=1e-5)


@pytest.mark.slow
def test_a_tiny_run_against_the_service_is_measured_by_the_library(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_common, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(simulate, "RESULTS_DIR", tmp_path)
    simulate.main(["--quick", "--requests", "160", "--aa-seeds", "1", "--window", "40"])
    report = json.loads((tmp_path / "simulate-smoke.json").read_text())
    assert (tmp_path / "simulate-smoke.md").exists() and (
        tmp_path / "simulate-smoke-ctr.png"
    ).exists()
    (ab,), (aa,) = report["ab"], report["aa"]
    for run in (ab, aa):
        assert run["server_matches_client"] is True
        assert run["difference"]["n_a"] + run["difference"]["n_b"] == 160
        assert run["arms"]["challenger"]["requests"] > 0 and run["arms"]["champion"]["requests"] > 0
    versions = {role: v["version"] for role, v in report["home"].items()}
    assert ab["champion_version"] == aa["champion_version"] == versions["good"]
    assert (ab["challenger_version"], aa["challenger_version"]) == (
        versions["worse"],
        versions["good-again"],
    )
    # What the world expects of the lists each arm showed: EASE's beat popularity's.
    arms = ab["arms"]
    assert arms["champion"]["expected_ctr"] > arms["challenger"]["expected_ctr"]
    assert report["aa_summary"]["runs"] == 1
    assert [row["to"] for row in report["over_time"]] == [40, 80, 120, 160]
