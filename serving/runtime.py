"""What each service worker changes in BentoML's and Python's runtime (``RECSYS_SERVE_TUNING``).

Under a fast client (wrk) a worker's p99 latency was set by Python's full garbage
collections, 115-190 ms each, not by the requests (benchmarks/README.md, results/serve-gc.md):

- ``timeout``: BentoML's ``TimeoutMiddleware`` arms a ``loop.call_later(timeout, ...)`` per
  request and never cancels it, so every answered request leaves a timer for the whole
  traffic timeout (30 s) that holds its future and a copy of the request's context (the
  tracing span, BentoML's request object): the live heap grows by 30 s of requests and full
  collections come often. :class:`CancellingTimeout` is the same middleware (a 504 when no
  response has started within the timeout) that cancels its timer once the response starts
  or the endpoint ends; it is put in BentoML's place before BentoML builds the app.
- ``freeze``: after start-up (bentoml, FastAPI, pydantic, SQLAlchemy, onnxruntime, the
  model's maps) a worker tracks about 150,000 objects that live as long as it does, and every
  full collection walked them all; ``gc.freeze()`` moves them to the permanent generation.
- ``threshold``: young collections every 50,000 allocations rather than 700, so fewer
  short-lived request objects are promoted towards a full collection.

Imports neither torch nor the training stack.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

GEN0_THRESHOLD = 50_000  # Python's default is 700


class CancellingTimeout:
    """BentoML's request timeout (``traffic.timeout``) without a timer left per request.

    As BentoML's: the app runs in a task; when it has not started its response within
    ``timeout`` seconds it is cancelled and the caller gets a 504. Unlike it, the timer is
    cancelled as soon as the response starts (or the app ends without one, which BentoML
    would answer only when the timer fired), so nothing of an answered request outlives it.
    """

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()

        def start() -> None:
            if not started.done():
                started.set_result(None)

        async def send_started(message: Message) -> None:
            start()
            await send(message)

        def time_out() -> None:
            if not started.done():
                started.set_exception(TimeoutError())

        timer = loop.call_later(self.timeout, time_out)
        task = asyncio.ensure_future(self.app(scope, receive, send_started))
        task.add_done_callback(lambda _: start())
        try:
            await started
        except TimeoutError:
            if task.cancel():
                message = f"Not able to process the request in {self.timeout} seconds"
                await JSONResponse({"error": message}, status_code=504)(scope, receive, send)
                return
        finally:
            timer.cancel()
        await task


def bentoml_timeout() -> type[Any]:
    """BentoML's own timeout middleware, whether or not it has been replaced here."""
    from bentoml._internal.server.http import traffic

    current: type[Any] = traffic.TimeoutMiddleware
    return _REPLACED.get("TimeoutMiddleware", current)


_REPLACED: dict[str, type[Any]] = {}


def use_cancelling_timeout() -> None:
    """Put :class:`CancellingTimeout` where BentoML's app factory looks for its timeout
    middleware (it imports the name when it builds the app, after the service is loaded)."""
    from bentoml._internal.server.http import traffic

    _REPLACED.setdefault("TimeoutMiddleware", traffic.TimeoutMiddleware)
    traffic.TimeoutMiddleware = CancellingTimeout  # type: ignore[misc,assignment]


def tune_collector(tunings: Iterable[str]) -> dict[str, Any]:
    """Apply ``threshold`` and ``freeze`` to this process's garbage collector (call it once
    start-up is done: the model loaded and warmed up); what was done, for the log."""
    chosen = set(tunings)
    done: dict[str, Any] = {}
    if "threshold" in chosen:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
        done["threshold"] = gc.get_threshold()
    if "freeze" in chosen:
        gc.collect()
        gc.freeze()
        done["frozen"] = gc.get_freeze_count()
    return done


def watch_full_collections(observe: Callable[[float], None]) -> None:
    """Call ``observe(seconds)`` after each full (generation 2) collection of this process:
    the pauses the tuning is about, for ``/metrics``. Costs two clock reads per collection.
    Once per process: a second call changes nothing."""
    if _WATCHING:
        return
    started = [0.0]

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        elif info["generation"] == 2:
            observe(time.perf_counter() - started[0])

    gc.callbacks.append(timed)
    _WATCHING.append(timed)


_WATCHING: list[Callable[[str, dict[str, Any]], None]] = []


def apply(tunings: Iterable[str]) -> None:
    """The import-time part: the timeout middleware (before BentoML builds the app)."""
    if "timeout" in set(tunings):
        use_cancelling_timeout()
