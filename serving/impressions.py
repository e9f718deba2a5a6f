"""The impression log: what each response showed, written to the database off the request path.

A request only appends to a bounded in-memory buffer (a lock and a deque append). A thread
writes the buffer in batches every ``interval`` seconds, or sooner once ``batch`` are waiting.
When the buffer is full the new impression is dropped and counted: logging never slows or
fails a request. A failed write keeps the batch for the next attempt (as far as the buffer's
capacity allows; what does not fit is dropped and counted) and waits before trying again.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence

from sqlalchemy import Engine

from recsys.online.impressions import Impression, write_impressions

logger = logging.getLogger(__name__)

Writer = Callable[[Engine, Sequence[Impression]], int]


class ImpressionLog:
    """A bounded buffer of impressions and the thread that writes them in batches."""

    def __init__(
        self,
        engine: Engine,
        *,
        capacity: int = 10_000,
        batch: int = 500,
        interval: float = 1.0,
        write: Writer = write_impressions,
        on_drop: Callable[[int], None] | None = None,
        on_write: Callable[[int], None] | None = None,
    ) -> None:
        self.engine = engine
        self.capacity = capacity
        self.batch = batch
        self.interval = interval
        self._write = write
        self._on_drop = on_drop
        self._on_write = on_write
        self._buffer: deque[Impression] = deque()
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.dropped = 0
        self.written = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name="impression-log", daemon=True)
        self._thread.start()

    def log(self, impression: Impression) -> bool:
        """Queue one impression; False (and counted) when the buffer is full."""
        with self._lock:
            if len(self._buffer) >= self.capacity:
                self.dropped += 1
                full = True
            else:
                self._buffer.append(impression)
                full = False
                if len(self._buffer) >= self.batch:
                    self._wake.set()
        if full and self._on_drop is not None:
            self._on_drop(1)
        return not full

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def flush(self) -> int:
        """Write everything queued now, batch by batch; returns how many were written."""
        written = 0
        with self._flushing:
            while True:
                with self._lock:
                    chunk = [
                        self._buffer.popleft() for _ in range(min(self.batch, len(self._buffer)))
                    ]
                if not chunk:
                    return written
                try:
                    self._write(self.engine, chunk)
                except Exception as exc:  # the database may be briefly away: keep and retry
                    self.failures += 1
                    self._requeue(chunk)
                    logger.warning(
                        "could not write %d impressions (%s); will retry",
                        len(chunk),
                        type(exc).__name__,
                    )
                    return written
                written += len(chunk)
                self.written += len(chunk)
                if self._on_write is not None:
                    self._on_write(len(chunk))

    def _requeue(self, chunk: list[Impression]) -> None:
        with self._lock:
            room = max(0, self.capacity - len(self._buffer))
            kept = chunk[-room:] if room else []
            self._buffer.extendleft(reversed(kept))
            lost = len(chunk) - len(kept)
            self.dropped += lost
        if lost and self._on_drop is not None:
            self._on_drop(lost)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            before = self.failures
            self.flush()
            if self.failures > before:
                self._stop.wait(min(30.0, self.interval * 5))  # back off while it is away

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread and write what is left (a clean shutdown loses nothing flushed)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        self.flush()
