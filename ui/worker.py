"""The slow computations (:mod:`ui.computed`) in a process of their own, so that counting a
million events never holds the interpreter lock the pages are served under.

One worker process, started on first use (``spawn``: nothing of the server's threads or
connections is inherited), with its own engine on the same database; the computations queue
there one at a time and their results come back pickled.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from sqlalchemy import Engine

from recsys.config import Settings
from recsys.db.engine import create_engine
from ui import computed
from ui.cache import Timed

_state: dict[str, Any] = {}

# What the worker can be asked, by name: each takes the worker's engine and settings first.
TASKS: dict[str, Callable[..., Any]] = {
    "data": lambda engine, settings: computed.data_summary(engine),
    "online": computed.online_view,
    "experiment": computed.experiment_view,
    "drift": computed.drift_view,
}


def _start(settings: Settings) -> None:
    _state["settings"] = settings
    _state["engine"] = create_engine(settings.database_url)


def _run(task: str, *args: Any) -> Timed:
    engine: Engine = _state["engine"]
    started = time.perf_counter()
    value = TASKS[task](engine, _state["settings"], *args)
    return Timed(value, time.perf_counter() - started)


class Worker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def call(self, task: str, *args: Any) -> Any:
        """Run ``task`` in the worker process and return its result with the time it took
        there (:class:`ui.cache.Timed`), or raise its error."""
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=1,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start,
                    initargs=(self.settings,),
                )
            pool = self._pool
        try:
            return pool.submit(_run, task, *args).result()
        except BrokenProcessPool:
            with self._lock:  # the worker died (killed, out of memory): a new one next time
                if self._pool is pool:
                    self._pool = None
            raise

    def close(self) -> None:
        """Stop the worker now, a computation under way included (its result is not needed)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is None:
            return
        processes = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
            process.join(timeout=10)
