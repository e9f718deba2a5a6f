"""The drift monitor's cool-down, kept in the database (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from datetime import timedelta

import sqlalchemy as sa

from recsys.db import locks
from recsys.online.triggers import LOCK_NAME, Claim, claim, failed, recent_triggers, started

HOUR_S = 3_600.0
T0 = 1_900_000_000_000


def take(engine: sa.Engine, now_ms: int, holder: str = "monitor") -> Claim:
    return claim(
        engine,
        now_ms=now_ms,
        cooldown_seconds=HOUR_S,
        signals=[{"name": "popularity_psi", "value": 0.4, "tripped": True}],
        champion_version=1,
        deployment="retrain/nightly",
        monitor_run_id="run-1",
        holder=holder,
    )


def test_one_trigger_per_cool_down(engine: sa.Engine) -> None:
    first = take(engine, T0)
    assert first.claimed and first.reason == "claimed"
    started(engine, first.trigger_id or 0, "flow-run-a")
    second = take(engine, T0 + 10 * 60_000)
    assert not second.claimed and "cool-down" in second.reason
    assert second.holding is not None and second.holding["retrain_run_id"] == "flow-run-a"
    later = take(engine, T0 + 3_600_001)  # the cool-down has passed
    assert later.claimed
    (newest, oldest) = recent_triggers(engine)
    assert newest["status"] == "claimed" and oldest["status"] == "started"
    assert oldest["signals"][0]["name"] == "popularity_psi"
    assert oldest["deployment"] == "retrain/nightly" and oldest["champion_version"] == 1


def test_a_trigger_that_could_not_start_gives_the_cool_down_back(engine: sa.Engine) -> None:
    first = take(engine, T0)
    assert first.trigger_id is not None
    failed(engine, first.trigger_id, "no deployment")
    again = take(engine, T0 + 60_000)
    assert again.claimed
    assert [t["status"] for t in recent_triggers(engine)] == ["claimed", "failed"]


def test_a_monitor_deciding_holds_off_another(engine: sa.Engine) -> None:
    locks.acquire(engine, LOCK_NAME, holder="other monitor", ttl=timedelta(minutes=5))
    blocked = take(engine, T0, holder="this monitor")
    assert not blocked.claimed and "another monitor is deciding" in blocked.reason
    locks.release(engine, LOCK_NAME, holder="other monitor")
    assert take(engine, T0, holder="this monitor").claimed


def test_monitors_claiming_at_once_start_one_retrain(engine: sa.Engine) -> None:
    barrier = threading.Barrier(6)
    results: list[Claim] = []

    def run(n: int) -> None:
        barrier.wait()
        results.append(take(engine, T0 + n, holder=f"monitor {n}"))

    threads = [threading.Thread(target=run, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r.claimed for r in results) == 1
    assert len(recent_triggers(engine)) == 1
