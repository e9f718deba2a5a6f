"""The service's runtime tuning: a request timeout that leaves no timer behind, and the
garbage collector's settings (in child processes: they are process-wide)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from serving import runtime
from serving.runtime import CancellingTimeout

ROOT = Path(__file__).resolve().parents[2]


def _app(delay: float, fail: bool = False) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(delay)
        if fail:
            raise RuntimeError("broken endpoint")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


async def _get(middleware: Any) -> tuple[httpx.Response, int]:
    """One request through ``middleware``; the response and the timers still armed after."""
    transport = httpx.ASGITransport(app=middleware)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/")
    scheduled = asyncio.get_running_loop()._scheduled  # type: ignore[attr-defined]
    return response, sum(1 for handle in scheduled if not handle.cancelled())


def test_an_answered_request_leaves_no_timer_where_bentomls_leaves_one() -> None:
    ours, left = asyncio.run(_get(CancellingTimeout(_app(0.0), timeout=30)))
    assert ours.status_code == 200 and ours.text == "ok"
    assert left == 0
    # Why the tuning exists: BentoML's own middleware keeps its 30 s timer (and with it the
    # request's context) armed after the answer. Should a BentoML release stop doing so,
    # this fails and the replacement can go.
    theirs, kept = asyncio.run(_get(runtime.bentoml_timeout()(_app(0.0), timeout=30)))
    assert theirs.status_code == 200 and kept == 1


def test_a_request_not_started_in_time_is_a_504_and_an_error_is_not_held_back() -> None:
    slow, _ = asyncio.run(_get(CancellingTimeout(_app(5.0), timeout=0.2)))
    assert slow.status_code == 504 and "0.2 seconds" in slow.json()["error"]

    async def failing() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(RuntimeError, match="broken endpoint"):
            await _get(CancellingTimeout(_app(0.0, fail=True), timeout=30))
        return loop.time() - started

    assert asyncio.run(failing()) < 5  # at once, not when the 30 s timer fires


def _python(script: str, *args: str, **env: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_service_puts_the_cancelling_timeout_in_bentomls_app() -> None:
    """In a fresh process, as in a worker: BentoML's app factory then builds its timeout from
    the replacement; RECSYS_SERVE_TUNING=none leaves BentoML's."""
    script = (
        "import json\n"
        "import serving.service\n"
        "from bentoml._internal.server.base_app import BaseAppFactory\n"
        "class App(BaseAppFactory):\n"
        "    name = 'probe'\n"
        "print(json.dumps([m.cls.__name__ for m in App(timeout=30).middlewares]))\n"
    )
    assert _python(script, RECSYS_SERVE_TUNING="timeout") == ["CancellingTimeout"]
    assert _python(script, RECSYS_SERVE_TUNING="none") == ["TimeoutMiddleware"]


@pytest.mark.parametrize(
    ("tunings", "frozen", "gen0"),
    [(["freeze", "threshold"], True, runtime.GEN0_THRESHOLD), ([], False, 700)],
)
def test_the_collector_is_tuned_as_asked(tunings: list[str], frozen: bool, gen0: int) -> None:
    script = (
        "import gc, json, sys\n"
        "from serving.runtime import tune_collector\n"
        "tune_collector(json.loads(sys.argv[1]))\n"
        "print(json.dumps([gc.get_freeze_count(), gc.get_threshold()[0]]))\n"
    )
    count, threshold = _python(script, json.dumps(tunings))
    assert (count > 10_000) is frozen  # the imported modules' objects, at least
    assert threshold == gen0
