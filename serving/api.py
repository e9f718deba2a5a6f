"""The HTTP side of the prediction API: one error shape, credentials, and the guards every
request passes before an endpoint sees it.

:mod:`serving.service` mounts :func:`create_app` on the BentoML service and defines the
endpoints over the models of :mod:`serving.schemas`; this module holds no model state. The
OpenAPI document at ``/docs.json`` is the one FastAPI derives from them, so it is the
contract the server enforces.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.exc import DataError, SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recsys.config import Settings
from recsys.keys import READ, KeyRing, grants
from serving.lifecycle import NotReadyError
from serving.scorer import NotFoundError, RequestError

logger = logging.getLogger(__name__)

Reason = Literal[
    "bad_input",
    "unauthorized",
    "forbidden",
    "not_found",
    "unknown_item",
    "method_not_allowed",
    "request_timeout",
    "payload_too_large",
    "unsupported_media_type",
    "no_champion",
    "database_unavailable",
    "internal_error",
]


class ErrorBody(BaseModel):
    """Every error the API answers, whatever the status."""

    status: int = Field(description="The HTTP status, repeated.")
    reason: Reason = Field(description="What kind of failure, for programs to branch on.")
    message: str = Field(description="What went wrong, for people.")
    field: str | None = Field(description="The request field at fault, when there is one.")


class ApiError(Exception):
    """An error answered as an :class:`ErrorBody`."""

    def __init__(
        self,
        status: int,
        reason: Reason,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.field = status, reason, message, field
        self.headers = headers or {}


def error_response(error: ApiError) -> JSONResponse:
    body = ErrorBody(
        status=error.status, reason=error.reason, message=error.message, field=error.field
    )
    return JSONResponse(body.model_dump(), status_code=error.status, headers=error.headers)


_DESCRIPTIONS: dict[int | str, str] = {
    400: "Bad input: the message names the field.",
    401: "No valid API key (`Authorization: Bearer <key>`).",
    403: "The key lacks the scope this endpoint needs.",
    404: "An id the request names does not exist.",
    408: "The request body did not arrive in time.",
    413: "The request body is too large.",
    415: "The body is not `application/json`.",
    503: "No champion is loaded yet, or the database is unavailable (see `reason`).",
    "default": "Any other error, in the same shape.",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the given error statuses (plus the catch-all)."""
    keys: list[int | str] = [*statuses, "default"]
    return {key: {"model": ErrorBody, "description": _DESCRIPTIONS[key]} for key in keys}


BODY_ERRORS = (400, 408, 413, 415)


# Errors -----------------------------------------------------------------------------------


def translate(exc: BaseException) -> ApiError:
    """The API error for anything an endpoint raised."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, NotFoundError):
        reason: Reason = "unknown_item" if exc.field.startswith("events") else "not_found"
        return ApiError(404, reason, str(exc), exc.field)
    if isinstance(exc, RequestError):
        return ApiError(exc.status, "bad_input", str(exc), exc.field)
    if isinstance(exc, NotReadyError):
        return ApiError(503, "no_champion", str(exc), headers={"Retry-After": "10"})
    if isinstance(exc, DataError):
        logger.warning("the database refused a value: %s", str(exc).splitlines()[0])
        return ApiError(400, "bad_input", "the database refused a value in this request")
    if isinstance(exc, SQLAlchemyError):
        logger.error("database error: %s", str(exc).splitlines()[0])
        return ApiError(
            503,
            "database_unavailable",
            "the database is unavailable; retry shortly",
            headers={"Retry-After": "2"},
        )
    logger.error("unexpected error", exc_info=exc)
    return ApiError(500, "internal_error", "an unexpected error occurred; it has been logged")


@contextmanager
def answered_as_api_errors() -> Iterator[None]:
    try:
        yield
    except ApiError:
        raise
    except Exception as exc:
        raise translate(exc) from None


def _validation_error(exc: RequestValidationError) -> ApiError:
    problems = exc.errors()
    first = problems[0] if problems else {}
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    kind = first.get("type", "")
    if kind == "json_invalid":
        return ApiError(400, "bad_input", "the body is not valid JSON", "body")
    field = ".".join(location) or "body"
    message = str(first.get("msg", "invalid input")).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        message = "unknown field"
    if kind == "missing" and field == "body":
        message = "a JSON object body is required"
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return ApiError(400, "bad_input", f"{field}: {message}{more}", field)


# Lean routes ------------------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)
# An endpoint as a lean route calls it: (service, body model, credentials) -> response model.
Endpoint = Callable[[Any, Any, HTTPAuthorizationCredentials | None], Any]


async def read_body(request: Request, model: type[M]) -> M:
    """The request's body as ``model``, refused exactly as FastAPI refuses a body parameter.

    FastAPI parses a body that declares a JSON media type (a body without one is validated
    as bytes, and fails), reports undecodable JSON as ``json_invalid`` and a missing body as
    ``missing``, and prefixes every error's location with ``body``; the same errors become the
    same :class:`ApiError` through :func:`_validation_error`.
    """
    raw = await request.body()
    data: Any = None
    if raw:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json" or (
            kind.startswith("application/") and kind.endswith("+json")
        ):
            try:
                data = json.loads(raw)
            except json.JSONDecodeError as exc:
                problem = {
                    "type": "json_invalid",
                    "loc": ("body", exc.pos),
                    "msg": "JSON decode error",
                }
                raise _validation_error(RequestValidationError([problem])) from None
            except ValueError:  # not UTF-8: FastAPI's words for a body it cannot parse
                raise ApiError(400, "bad_input", "There was an error parsing the body") from None
        else:
            data = raw
    if data is None:
        missing = {"type": "missing", "loc": ("body",), "msg": "Field required"}
        raise _validation_error(RequestValidationError([missing]))
    try:
        # from_attributes: FastAPI's validator of a body model is built that way, and a body
        # that is no object is then refused in its words.
        return model.model_validate(data, from_attributes=True)
    except ValidationError as exc:
        problems = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise _validation_error(RequestValidationError(problems)) from None


def lean_route(
    path: str, model: type[BaseModel], endpoint: Endpoint, service: Callable[[], Any]
) -> Route:
    """``POST path`` answered by ``endpoint`` without FastAPI's per-request machinery.

    The FastAPI route of the same endpoint stays in the app and in its OpenAPI document (the
    contract); this route goes in front of it. It reads the body as ``model``
    (:func:`read_body`), the key as :data:`bearer` reads it, and answers the endpoint's
    response model as JSON; errors go through the app's handlers as before. What it skips is
    FastAPI's dependency solving and response re-validation: about 0.45 ms of a worker's CPU
    per ``recommend`` under load (benchmarks/README.md, "Service workers").
    """
    on_loop = inspect.iscoroutinefunction(endpoint)

    async def answer(request: Request) -> Response:
        body = await read_body(request, model)
        key = await bearer(request)
        if on_loop:
            result = await endpoint(service(), body, key)
        else:
            result = await run_in_threadpool(endpoint, service(), body, key)
        return Response(result.model_dump_json(by_alias=True), media_type="application/json")

    return Route(path, answer, methods=["POST"], include_in_schema=False)


def put_in_front(app: FastAPI, routes: list[Route]) -> None:
    """Route ``routes`` before every other route of ``app``."""
    app.router.routes[:0] = routes


# Guards -----------------------------------------------------------------------------------


class BodyGuard:
    """Reads a request's body before the app does: refuses a body that is not JSON (415),
    larger than ``max_bytes`` (413) or not complete within ``timeout`` seconds (408), then
    hands the app the buffered body."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout: float) -> None:
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body = await self._read(headers, receive)
        except ApiError as error:
            await error_response(error)(scope, receive, send)
            return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read(self, headers: dict[str, str], receive: Receive) -> bytes:
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise _too_large(self.max_bytes)
        chunks: list[bytes] = []
        size = 0
        # One deadline for the whole body (asyncio.wait_for per message made a task each).
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        break
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise _too_large(self.max_bytes)
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise ApiError(
                408, "request_timeout", f"the body did not arrive within {self.timeout:g} s"
            ) from None
        body = b"".join(chunks)
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        if body and kind and not (kind == "application/json" or kind.endswith("+json")):
            raise ApiError(
                415,
                "unsupported_media_type",
                f"the body must be application/json, not {kind}",
                "content-type",
            )
        return body


WORKER_HEADER = "x-recsys-worker"


class WorkerHeader:
    """Names the worker process that answered, in the ``X-Recsys-Worker`` header of every
    response (BentoML's routes too): with several workers, callers and tests can tell them
    apart, e.g. to see each one take up a new champion."""

    def __init__(self, app: ASGIApp, *, worker: str) -> None:
        self.app = app
        self.header = (WORKER_HEADER.encode("latin-1"), worker.encode("latin-1"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), self.header]
            await send(message)

        await self.app(scope, receive, named)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the body is larger than {limit} bytes", "body")


bearer = HTTPBearer(auto_error=False, description="An API key made with `recsys keys create`.")


class Guard:
    """Checks the caller's key for a scope; reads pass without one when reads are open."""

    def __init__(self, keys: KeyRing, settings: Settings) -> None:
        self.keys, self.settings = keys, settings

    def check(self, credentials: HTTPAuthorizationCredentials | None, scope: str) -> None:
        if scope == READ and self.settings.read_auth == "open":
            return
        if credentials is None:
            raise ApiError(
                401,
                "unauthorized",
                "this endpoint needs an API key: Authorization: Bearer <key>",
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            scopes = self.keys.scopes(credentials.credentials)
        except SQLAlchemyError as exc:
            raise translate(exc) from None
        if scopes is None:
            raise ApiError(
                401,
                "unauthorized",
                "the API key is not valid (unknown or revoked)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not grants(scopes, scope):
            raise ApiError(403, "forbidden", f"this endpoint needs a key with the {scope} scope")


# The app ----------------------------------------------------------------------------------

INFRA_PATHS: dict[str, Any] = {
    "/healthz": {
        "get": {
            "tags": ["infrastructure"],
            "summary": "The process is up.",
            "responses": {"200": {"description": "Alive."}},
        }
    },
    "/readyz": {
        "get": {
            "tags": ["infrastructure"],
            "summary": "A model is loaded and warmed up.",
            "responses": {
                "200": {"description": "Ready."},
                "503": {"description": "No model loaded yet."},
            },
        }
    },
    "/metrics": {
        "get": {
            "tags": ["infrastructure"],
            "summary": "Prometheus metrics.",
            "responses": {
                "200": {
                    "description": "Prometheus text format.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    },
}


def create_app(settings: Settings) -> FastAPI:
    """The FastAPI app the endpoints are routed on, with its error handlers and guards."""
    app = FastAPI(
        title="recsys",
        summary="Recommendations from the registry's champion; every response names its version.",
        version="1",
        openapi_url="/docs.json",
        docs_url=None,  # BentoML's page at / renders this document from local assets
        redoc_url=None,
    )

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = _validation_error(exc)
        logger.debug("400 on %s: %s", request.url.path, error.message)
        return error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        reasons: dict[int, Reason] = {404: "not_found", 405: "method_not_allowed"}
        reason = reasons.get(exc.status_code, "bad_input")
        return error_response(
            ApiError(exc.status_code, reason, str(exc.detail), headers=dict(exc.headers or {}))
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            document = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            document["paths"] = {**INFRA_PATHS, **document["paths"]}
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(
        BodyGuard, max_bytes=settings.max_body_bytes, timeout=settings.body_timeout_seconds
    )
    return app
