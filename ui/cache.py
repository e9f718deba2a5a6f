"""Values that take seconds to compute (counts over every event, online metrics) kept fresh in
the background, so a page reads the last one at once.

A :class:`Refreshing` value is computed in a thread of its own. A reader gets the latest value
without waiting, and starts a new computation when that one is older than ``max_age``, or when
the store changed (``token``, a cheap query asked at most every ``token_every`` seconds) and
it is older than ``min_age`` and than ``load`` times its own computation took (so a value
that takes 3 s to count is recomputed at most every 30 s however busy the store: a tenth of
a core). Only the very first read (or one after :meth:`invalidate`) waits for a computation,
at most ``wait`` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result(Generic[T]):
    """A computed value (None when none is ready yet), when it was computed and how long it
    took, and the error of the last attempt if it failed."""

    value: T | None
    computed_at: float | None  # epoch seconds
    seconds: float | None
    error: str | None = None
    refreshing: bool = False

    @property
    def ready(self) -> bool:
        return self.value is not None

    @property
    def pending(self) -> bool:
        """No value yet, and one is being computed: a page shows it once it is ready."""
        return self.value is None and self.refreshing


@dataclass(frozen=True)
class Timed:
    """A computed value with how long its computation took where it ran (a computation
    waiting its turn elsewhere returns this, so the wait is not counted)."""

    value: Any
    seconds: float


class Refreshing(Generic[T]):
    def __init__(
        self,
        name: str,
        compute: Callable[[], T],
        *,
        max_age: float = 300.0,
        min_age: float = 2.0,
        load: float = 10.0,
        token: Callable[[], Hashable] | None = None,
        token_every: float = 2.0,
        wait: float = 60.0,
    ) -> None:
        self.name = name
        self._compute = compute
        self.max_age = max_age
        self.min_age = min_age
        self.load = load
        self._token = token
        self.token_every = token_every
        self.wait = wait
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._value: T | None = None
        self._computed_at: float | None = None  # monotonic
        self._wall_at: float | None = None
        self._seconds: float | None = None
        self._error: str | None = None
        self._running = False
        self._generation = 0  # bumped by invalidate(): older computations do not count
        self._token_seen: Hashable = None
        self._token_checked = -float("inf")
        self._token_now: Hashable = None

    def start(self) -> None:
        """Begin the first computation now (a warm-up), without waiting for it."""
        with self._lock:
            self._launch()

    def get(self) -> Result[T]:
        """The latest value at once; the first read waits for one (at most ``wait`` s)."""
        token = self._read_token()
        with self._lock:
            if token is not None:
                self._token_now = token
            if self._stale():
                self._launch()
            if self._computed_at is None and self._running:
                self._done.wait_for(lambda: not self._running, timeout=self.wait)
            return Result(
                self._value,
                self._wall_at,
                self._seconds,
                self._error,
                self._running,
            )

    def invalidate(self) -> None:
        """Forget the value: the next read waits for a fresh one (after a change made here)."""
        with self._lock:
            self._generation += 1
            self._value = None
            self._computed_at = None
            self._wall_at = None
            self._running = False  # a computation under way no longer counts
            self._done.notify_all()

    def _read_token(self) -> Hashable:
        if self._token is None:
            return None
        now = time.monotonic()
        if now - self._token_checked < self.token_every:
            return None
        self._token_checked = now
        try:
            return self._token()
        except Exception:  # the store may be briefly away: judge by age alone
            logger.warning("%s: could not read the change token", self.name, exc_info=True)
            return None

    def _stale(self) -> bool:
        if self._running:
            return False
        if self._computed_at is None:
            return True
        age = time.monotonic() - self._computed_at
        changed = self._token_now is not None and self._token_now != self._token_seen
        settle = max(self.min_age, self.load * (self._seconds or 0.0))
        return age > self.max_age or (changed and age > settle)

    def _launch(self) -> None:
        if self._running:
            return
        self._running = True
        thread = threading.Thread(
            target=self._run, args=(self._generation,), name=f"refresh-{self.name}", daemon=True
        )
        thread.start()

    def _run(self, generation: int) -> None:
        started = time.monotonic()
        value: T | None = None
        error: str | None = None
        token: Hashable = None
        try:
            if self._token is not None:  # before the computation: a change during it counts
                token = self._token()
            value = self._compute()
        except Exception as exc:
            logger.exception("%s: computation failed", self.name)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            error = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        with self._lock:
            if generation != self._generation:
                return  # invalidated meanwhile: a newer computation owns the state
            self._running = False
            self._seconds = time.monotonic() - started
            if isinstance(value, Timed):
                self._seconds = value.seconds
                value = value.value
            if error is None:
                self._value = value
                self._computed_at = time.monotonic()
                self._wall_at = time.time()
                self._token_seen = token
            else:
                # Keep the last good value; try again after min_age.
                self._computed_at = self._computed_at or time.monotonic()
                self._computed_at = min(self._computed_at, time.monotonic() - self.max_age)
                self._computed_at += self.min_age
            self._error = error
            self._done.notify_all()


class Keyed(Generic[T]):
    """One :class:`Refreshing` per key (an online range, an experiment), made on first use."""

    def __init__(self, name: str, make: Callable[[Hashable], Refreshing[T]]) -> None:
        self.name = name
        self._make = make
        self._values: dict[Hashable, Refreshing[T]] = {}
        self._lock = threading.Lock()

    def __getitem__(self, key: Hashable) -> Refreshing[T]:
        with self._lock:
            found = self._values.get(key)
            if found is None:
                found = self._values[key] = self._make(key)
            return found

    def invalidate(self) -> None:
        with self._lock:
            values = list(self._values.values())
        for value in values:
            value.invalidate()
