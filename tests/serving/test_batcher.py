"""The micro-batcher behind ``recommend``: batches form under load, answers stay per caller."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from serving.batcher import MicroBatcher


class Doubler:
    """Doubles numbers; a negative number is that caller's error; 13 breaks the batch."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, numbers: Sequence[int]) -> list[int | BaseException]:
        self.release.wait(5)
        self.batches.append(list(numbers))
        if 13 in numbers:
            raise RuntimeError("the batch broke")
        return [ValueError(f"negative: {n}") if n < 0 else 2 * n for n in numbers]


def test_a_lone_request_is_answered_at_once_in_a_batch_of_one() -> None:
    work = Doubler()
    sizes: list[int] = []
    batcher = MicroBatcher(work, on_batch=sizes.append)
    assert asyncio.run(batcher.submit(21)) == 42
    assert work.batches == [[21]] and sizes == [1]


def test_requests_arriving_during_a_batch_form_the_next_one_and_errors_stay_per_caller() -> None:
    work = Doubler()
    batcher = MicroBatcher(work, max_batch=4)

    async def scenario() -> list[int | BaseException]:
        work.release.clear()  # hold the first batch until everyone else has queued
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(batcher.submit(n)) for n in (2, -3, 4, 5, 6)]
        await asyncio.sleep(0.05)
        work.release.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    answers = asyncio.run(scenario())
    assert work.batches == [[1], [2, -3, 4, 5], [6]]  # at most max_batch at a time
    assert answers[0] == 2 and answers[1] == 4 and answers[3:] == [8, 10, 12]
    assert isinstance(answers[2], ValueError) and "negative: -3" in str(answers[2])


def test_a_batch_that_raises_fails_its_callers_and_the_next_batch_still_runs() -> None:
    work = Doubler()
    batcher = MicroBatcher(work)

    async def scenario() -> tuple[list[int | BaseException], int]:
        broken = await asyncio.gather(batcher.submit(13), batcher.submit(1), return_exceptions=True)
        return broken, await batcher.submit(5)

    broken, after = asyncio.run(scenario())
    assert all(isinstance(b, RuntimeError) for b in broken) and after == 10


def test_a_caller_that_gave_up_is_skipped() -> None:
    work = Doubler()
    batcher = MicroBatcher(work)

    async def scenario() -> int:
        work.release.clear()
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(batcher.submit(2))
        kept = asyncio.ensure_future(batcher.submit(3))
        await asyncio.sleep(0)
        gone.cancel()
        work.release.set()
        await first
        return await kept

    assert asyncio.run(scenario()) == 6
    assert work.batches == [[1], [3]]


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(Doubler(), max_batch=0)
