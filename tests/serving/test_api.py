"""The HTTP contract without a server: error translation, validation messages, the body guard."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import DataError, OperationalError

from recsys.config import Settings
from serving.api import ApiError, create_app, lean_route, put_in_front, translate
from serving.lifecycle import NotReadyError
from serving.schemas import RecommendIn
from serving.scorer import NotFoundError, RequestError


def _driver_error(kind: type[Exception]) -> Exception:
    return kind("SELECT ...", {}, Exception("server closed the connection unexpectedly"))


@pytest.mark.parametrize(
    ("error", "status", "reason"),
    [
        (NotReadyError("no model is loaded yet"), 503, "no_champion"),
        (_driver_error(OperationalError), 503, "database_unavailable"),
        (_driver_error(DataError), 400, "bad_input"),
        (RequestError("k", "must be between 1 and 1000"), 400, "bad_input"),
        (NotFoundError("item_id", "unknown item 'x'"), 404, "not_found"),
        (NotFoundError("events[0].item_id", "unknown item 'x'"), 404, "unknown_item"),
        (ZeroDivisionError("division by zero"), 500, "internal_error"),
    ],
)
def test_api_errors_tell_apart_no_champion_database_down_and_bad_input(
    error: Exception, status: int, reason: str
) -> None:
    """Regression: every 503 said "An unexpected error has occurred"."""
    translated = translate(error)
    assert (translated.status, translated.reason) == (status, reason)
    assert "Error" not in translated.message  # no exception class names
    if status == 503:
        assert translated.headers["Retry-After"]


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = create_app(Settings(max_body_bytes=1000, body_timeout_seconds=5))

    @app.post("/echo")
    def echo(request: RecommendIn) -> dict[str, Any]:
        return request.model_dump()

    @app.post("/fail")
    def fail() -> None:
        raise ApiError(503, "database_unavailable", "the database is unavailable")

    # The same endpoint behind FastAPI's route and behind a lean route (serving.api.lean_route).
    def echo_model(service: object, request: RecommendIn, key: Any = None) -> RecommendIn:
        assert service == "the service"
        if request.user_id == "boom":
            raise ApiError(503, "database_unavailable", "the database is unavailable")
        return request

    @app.post("/echo-model", response_model=RecommendIn)
    def fastapi_echo(request: RecommendIn) -> RecommendIn:
        return echo_model("the service", request)

    put_in_front(app, [lean_route("/lean-echo", RecommendIn, echo_model, lambda: "the service")])
    return TestClient(app)


def _error(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"status", "reason", "message", "field"}
    assert body["status"] == response.status_code
    return dict(body)


def test_api_body_guard_refuses_other_media_types_and_large_bodies(client: TestClient) -> None:
    assert client.post("/echo", json={"user_id": "u1"}).status_code == 200
    plain = client.post(
        "/echo", content=b'{"user_id": "u1"}', headers={"content-type": "text/plain"}
    )
    assert plain.status_code == 415 and _error(plain)["field"] == "content-type"
    large = client.post("/echo", json={"user_id": "u" * 2000})
    assert large.status_code == 413 and _error(large)["reason"] == "payload_too_large"
    vendor = client.post(
        "/echo", content=b'{"user_id": "u1"}', headers={"content-type": "application/x+json"}
    )
    assert vendor.status_code == 200


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"user_id": "u1", "filtres": {}}, "filtres", "unknown field"),
        ({"user_id": "u1", "explain": 0}, "explain", "boolean"),
        ({"user_id": "u1", "k": "3"}, "k", "must be an integer"),
        ({"user_id": "u1", "k": 2.5}, "k", "must be an integer"),
        ({"user_id": "a\x00b"}, "user_id", "control characters (found U+0000)"),
        ({"user_id": "x" * 300}, "user_id", "at most 255"),
        ({"user_id": "u1", "filters": {"min_price": True}}, "filters.min_price", "number"),
    ],
)
def test_api_validation_names_the_field_in_one_shape(
    client: TestClient, body: dict[str, Any], field: str, message: str
) -> None:
    response = client.post("/echo", json=body)
    assert response.status_code == 400, response.text
    error = _error(response)
    assert error["field"] == field and message in error["message"], error


def test_api_integral_numbers_are_integers_and_routing_errors_share_the_shape(
    client: TestClient,
) -> None:
    assert client.post("/echo", json={"user_id": "u1", "k": 3.0}).json()["k"] == 3
    wrong = client.get("/echo")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert _error(wrong)["reason"] == "method_not_allowed"
    missing = client.post("/echo", content=b"")
    assert missing.status_code == 400 and "JSON object body" in _error(missing)["message"]
    failed = client.post("/fail")
    assert failed.status_code == 503 and _error(failed)["reason"] == "database_unavailable"


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'{"user_id": "u1", "k": 3.0, "filters": {"genres": ["a"]}}', "application/json"),
        (b'{"user_id": "u1"}', "application/vnd.x+json; charset=utf-8"),
        (b'{"user_id": "boom"}', "application/json"),
        (b'{"user_id": "u1", "filtres": {}}', "application/json"),
        (b'{"user_id": "u1", "k": "3"}', "application/json"),
        (b'{"user_id": "a\\u0000b"}', "application/json"),
        (b'{"user_id": ', "application/json"),
        (b'\xff{"user_id": "u1"}\xfe', "application/json"),
        (b"[1, 2]", "application/json"),
        (b"null", "application/json"),
        (b'"u1"', "application/json"),
        (b"", "application/json"),
        (b'{"user_id": "u1"}', None),
        (b'{"user_id": "u1"}', "text/plain"),
        (b'{"user_id": "u1"}', "application/xml"),
    ],
)
def test_api_a_lean_route_answers_exactly_as_fastapi_does(
    client: TestClient, content: bytes, content_type: str | None
) -> None:
    """Status, body and error shape match FastAPI's route for the same endpoint, valid or not."""
    headers = {} if content_type is None else {"content-type": content_type}
    lean = client.post("/lean-echo", content=content, headers=headers)
    fastapi = client.post("/echo-model", content=content, headers=headers)
    assert (lean.status_code, lean.json()) == (fastapi.status_code, fastapi.json())
    assert lean.headers["content-type"] == fastapi.headers["content-type"]


def test_api_a_lean_route_refuses_other_methods_in_the_same_shape(client: TestClient) -> None:
    wrong = client.get("/lean-echo")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert _error(wrong)["reason"] == "method_not_allowed"
