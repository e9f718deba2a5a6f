"""Micro-batching for the prediction API: concurrent requests share one pass of the work.

The service's ``recommend`` endpoint is a coroutine that hands its query to a
:class:`MicroBatcher` and awaits the answer. One drain task takes every query waiting at that
moment (up to ``max_batch``), runs the batch function once in a worker thread (one history
query, one ONNX run), and answers each caller. There is no batching window: a lone request is
served at once, and requests that arrive while a batch runs form the next one, so batches grow
with the load and latency never waits on a timer.

Per request this saves the hand-over to a worker thread, a database round trip and an ONNX
call. Answers stay per query: a bad request fails alone, not its batch. Imports neither torch
nor bentoml.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

Q = TypeVar("Q")
R = TypeVar("R")


class MicroBatcher(Generic[Q, R]):
    """Runs ``work`` over the queries of concurrent callers, one batch at a time.

    ``work(queries)`` returns one answer per query, in order: a value or an exception meant
    for that caller alone. An exception raised by ``work`` itself goes to every caller in the
    batch. ``on_batch(size)`` is called once per batch (for metrics).
    """

    def __init__(
        self,
        work: Callable[[Sequence[Q]], Sequence[R | BaseException]],
        *,
        max_batch: int = 64,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.work = work
        self.max_batch = max_batch
        self.on_batch = on_batch
        self._waiting: list[tuple[Q, asyncio.Future[R]]] = []
        self._drain: asyncio.Task[None] | None = None

    async def submit(self, query: Q) -> R:
        """The answer to ``query``; raises the exception meant for it."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[R] = loop.create_future()
        self._waiting.append((query, answer))
        if self._drain is None or self._drain.done():
            self._drain = loop.create_task(self._run())
        return await answer

    async def _run(self) -> None:
        while self._waiting:
            # Let the event loop finish parsing requests that already arrived, so they join
            # this batch rather than the next (one pass of the loop, no timer).
            await asyncio.sleep(0)
            batch = self._waiting[: self.max_batch]
            del self._waiting[: self.max_batch]
            live = [(q, f) for q, f in batch if not f.done()]  # callers may have gone
            if not live:
                continue
            if self.on_batch is not None:
                self.on_batch(len(live))
            try:
                answers = await asyncio.to_thread(self.work, [q for q, _ in live])
                if len(answers) != len(live):
                    raise RuntimeError(f"batch of {len(live)} got {len(answers)} answers")
            except Exception as exc:  # the whole batch failed: every caller hears why
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), answer in zip(live, answers, strict=True):
                if future.done():
                    continue
                if isinstance(answer, BaseException):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)
