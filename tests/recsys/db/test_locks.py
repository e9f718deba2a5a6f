"""Named locks: one holder at a time, expiry, and nesting within one context."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import Engine, select

from recsys.db import locks
from recsys.db.schema import locks_table

TTL = timedelta(hours=1)


def holders(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [row.holder for row in conn.execute(select(locks_table))]


def test_a_held_lock_refuses_another_holder_and_is_released_after(engine: Engine) -> None:
    busy = pytest.raises(locks.LockHeldError, match="job is already running: held by first")
    with locks.held(engine, "job", holder="first", ttl=TTL), busy:
        locks.acquire(engine, "job", holder="second", ttl=TTL)
    assert holders(engine) == []
    locks.acquire(engine, "job", holder="second", ttl=TTL)
    assert holders(engine) == ["second"]


def test_an_expired_lock_is_taken_over(engine: Engine) -> None:
    locks.acquire(engine, "job", holder="dead", ttl=timedelta(seconds=-1))
    with locks.held(engine, "job", holder="alive", ttl=TTL):
        assert holders(engine) == ["alive"]


def test_held_nests_in_one_context_and_the_outer_block_releases(engine: Engine) -> None:
    with locks.held(engine, "job", holder="entry point", ttl=TTL):
        with locks.held(engine, "job", holder="flow run 1", ttl=TTL):  # already ours: no-op
            assert holders(engine) == ["entry point"]
        assert holders(engine) == ["entry point"]  # the inner block did not release it
        with locks.held(engine, "other", holder="flow run 1", ttl=TTL):  # another lock: taken
            assert sorted(holders(engine)) == ["entry point", "flow run 1"]
    assert holders(engine) == []


def test_held_does_not_nest_across_threads(engine: Engine) -> None:
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            with locks.held(engine, "job", holder="thread", ttl=TTL):
                pass
        except locks.LockHeldError as exc:
            errors.append(exc)

    with locks.held(engine, "job", holder="main", ttl=TTL):
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert len(errors) == 1 and "held by main" in str(errors[0])


def test_renew_keeps_a_lock_its_holder_still_has_and_refuses_a_lost_one(engine: Engine) -> None:
    locks.acquire(engine, "job", holder="slow", ttl=timedelta(seconds=-1))
    locks.renew(engine, "job", holder="slow", ttl=TTL)  # ran out, but nobody took it
    with pytest.raises(locks.LockHeldError):
        locks.acquire(engine, "job", holder="other", ttl=TTL)
    locks.release(engine, "job", holder="slow")
    locks.acquire(engine, "job", holder="other", ttl=TTL)
    with pytest.raises(locks.LockHeldError, match="job: slow no longer holds the lock"):
        locks.renew(engine, "job", holder="slow", ttl=TTL)
    assert holders(engine) == ["other"]


def test_holder_names_the_live_holder_and_release_frees_only_that_holders_lock(
    engine: Engine,
) -> None:
    assert locks.holder(engine, "job") is None
    locks.acquire(engine, "job", holder="flow run 1", ttl=TTL)
    assert locks.holder(engine, "job") == "flow run 1"
    assert not locks.release(engine, "job", holder="flow run 2")  # not its lock: kept
    assert holders(engine) == ["flow run 1"]
    assert locks.release(engine, "job", holder="flow run 1")
    assert locks.holder(engine, "job") is None
    locks.acquire(engine, "job", holder="gone", ttl=timedelta(seconds=-1))
    assert locks.holder(engine, "job") is None  # expired: anyone may take it
