"""Values kept fresh in the background: the first read waits, later reads never do, a change
or age starts a new computation, a failure keeps the last value, invalidate forgets it."""

from __future__ import annotations

import threading
import time

from ui.cache import Keyed, Refreshing


class Counter:
    """A computation that counts its runs and can be held back or made to fail."""

    def __init__(self) -> None:
        self.runs = 0
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False

    def __call__(self) -> int:
        self.gate.wait(timeout=10)
        self.runs += 1
        if self.fail:
            raise RuntimeError("the store is away\nsecond line")
        return self.runs


def wait_until(check: object, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_the_first_read_waits_and_later_ones_get_the_last_value() -> None:
    compute = Counter()
    value = Refreshing("t", compute, max_age=60)
    first = value.get()
    assert first.value == 1 and first.error is None and first.computed_at is not None
    assert value.get().value == 1 and compute.runs == 1  # fresh: not computed again


def test_a_stale_value_is_served_while_the_next_one_is_computed() -> None:
    compute = Counter()
    value = Refreshing("t", compute, max_age=0.0, min_age=0.0, load=0.0)
    assert value.get().value == 1
    compute.gate.clear()  # the next computation hangs until released
    time.sleep(0.01)
    during = value.get()
    assert during.value == 1 and during.refreshing  # no waiting on it
    compute.gate.set()
    wait_until(lambda: compute.runs == 2)
    wait_until(lambda: value.get().value >= 2)  # type: ignore[operator]


def test_a_change_in_the_store_recomputes_once_old_enough() -> None:
    compute = Counter()
    token = {"now": 1}
    value = Refreshing(
        "t", compute, max_age=3600, min_age=0.0, load=0.0, token=lambda: token["now"], token_every=0
    )
    assert value.get().value == 1
    assert value.get().value == 1 and compute.runs == 1  # same token: nothing to do
    token["now"] = 2
    value.get()
    wait_until(lambda: compute.runs == 2)
    wait_until(lambda: value.get().value == 2)
    held = Refreshing("h", Counter(), max_age=3600, min_age=3600, token=lambda: token["now"])
    held.get()
    token["now"] = 3
    assert held.get().value == 1  # changed, but younger than min_age


def test_a_failure_keeps_the_last_value_and_says_why() -> None:
    compute = Counter()
    value = Refreshing("t", compute, max_age=0.0, min_age=0.0, load=0.0)
    assert value.get().value == 1
    compute.fail = True
    value.get()
    wait_until(lambda: value.get().error is not None)
    failed = value.get()
    assert failed.value == 1 and failed.error == "RuntimeError: the store is away"
    nothing = Refreshing("n", compute, max_age=60).get()
    assert nothing.value is None and nothing.error == "RuntimeError: the store is away"


def test_invalidate_makes_the_next_read_wait_for_a_fresh_value() -> None:
    compute = Counter()
    value = Refreshing("t", compute, max_age=3600)
    assert value.get().value == 1
    value.invalidate()
    assert value.get().value == 2


def test_keyed_values_are_made_once_per_key() -> None:
    made: list[object] = []

    def make(key: object) -> Refreshing[int]:
        made.append(key)
        return Refreshing(str(key), Counter(), max_age=60)

    values: Keyed[int] = Keyed("k", make)
    assert values["a"].get().value == 1 and values["a"].get().value == 1
    values["b"].start()
    assert made == ["a", "b"]
    values.invalidate()
    assert values["a"].get().value == 2


def test_a_slow_computation_is_repeated_at_most_every_load_times_its_duration() -> None:
    def slow() -> int:
        time.sleep(0.05)
        return 1

    token = {"now": 1}
    value = Refreshing(
        "s", slow, max_age=3600, min_age=0.0, load=1000, token=lambda: token["now"], token_every=0
    )
    assert value.get().value == 1
    token["now"] = 2
    assert not value.get().refreshing  # 50 s at least before a change is counted again


def test_a_timed_result_counts_its_own_duration_not_its_wait() -> None:
    from ui.cache import Timed

    value = Refreshing("w", lambda: Timed(7, 0.25), max_age=60)
    got = value.get()
    assert got.value == 7 and got.seconds == 0.25
