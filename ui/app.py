"""The dashboard's web application: server-rendered pages (Jinja2) with Chart.js charts, every
asset served from ``ui/static``.

Pages read through the library; actions that change state need an admin key (see
:mod:`ui.auth`). Every response carries ``Server-Timing: app;dur=MS``, the time the server
spent on it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Engine

from recsys.config import Settings
from ui.pages import data, explore, flows, models, online
from ui.prefect_api import PrefectApi
from ui.rendering import HERE
from ui.state import Dashboard

LOOPBACK = ("127.0.0.1", "localhost", "::1")
SECURITY_HEADERS = {
    # Every script and style comes from here; charts read their data from JSON blocks.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def create_app(
    settings: Settings,
    engine: Engine,
    *,
    prefect: PrefectApi | None = None,
    host: str = "127.0.0.1",
    warm_up: bool = True,
    first_wait: float | None = None,
) -> FastAPI:
    """The application over ``engine`` and ``settings``. Bound to a loopback ``host``, it
    answers only requests addressed to a loopback name (a web page elsewhere cannot reach it
    by rebinding its own name to 127.0.0.1). ``first_wait`` overrides how long a page waits
    for a value never computed yet (``ui.state.FIRST_WAIT``)."""
    board = (
        Dashboard(settings, engine, prefect)
        if first_wait is None
        else Dashboard(settings, engine, prefect, first_wait=first_wait)
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if warm_up:
            board.warm_up()
        yield
        board.close()

    app = FastAPI(
        title="recsys dashboard",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    app.state.dashboard = board
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    for page in (data, models, online, explore, flows):
        app.include_router(page.router)

    @app.get("/", include_in_schema=False)
    def home(request: Request) -> Response:
        return RedirectResponse(f"{request.scope.get('root_path', '')}/data", status_code=307)

    @app.get("/healthz", include_in_schema=False)
    def health() -> Response:
        return JSONResponse({"ok": True})

    allowed = None if host not in LOOPBACK else {*LOOPBACK, "[::1]"}

    @app.middleware("http")
    async def guard_and_time(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        if allowed is not None and _host_name(request) not in allowed:
            response: Response = JSONResponse(
                {"error": "this dashboard answers requests to 127.0.0.1 or localhost only"},
                status_code=421,
            )
        else:
            response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        elapsed = (time.perf_counter() - started) * 1000
        response.headers["Server-Timing"] = f"app;dur={elapsed:.1f}"
        return response

    return app


def _host_name(request: Request) -> str:
    host = request.headers.get("host", "")
    if host.startswith("["):
        return host.split("]")[0] + "]"
    return host.rsplit(":", 1)[0] if ":" in host else host
