"""One real `bentoml serve` process over HTTP: endpoints, health, bad input, fuzzing, hot swap."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from recsys import registry

sys.path.insert(0, str(Path(__file__).parent))
from conftest import bentoml_serve, make_home

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-admin-token"
POLL_SECONDS = 1.0


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    home = make_home(tmp_path_factory.mktemp("http") / "home")
    env = {**home.env, "RECSYS_POLL_SECONDS": str(POLL_SECONDS), "RECSYS_ADMIN_TOKEN": TOKEN}
    with bentoml_serve("serving.service:RecsysService", env, ROOT, home.path / "serve.log") as base:
        yield base, home


def post(base: str, endpoint: str, body: Any) -> httpx.Response:
    return httpx.post(f"{base}/{endpoint}", json=body, timeout=30)


def test_http_endpoints_health_and_metrics(served: tuple[str, Any]) -> None:
    base, home = served
    assert httpx.get(f"{base}/healthz").status_code == 200
    assert httpx.get(f"{base}/readyz").status_code == 200

    first = post(base, "recommend", {"user_id": "u4", "k": 5, "explain": True})
    assert first.status_code == 200, first.text
    data = first.json()
    assert data["model_version"] == home.champion and len(data["items"]) == 5
    assert all(item["because"] for item in data["items"])

    top = data["items"][0]["item_id"]
    recorded = post(base, "events", {"events": [{"user_id": "u4", "item_id": top}]})
    assert recorded.status_code == 200 and recorded.json()["inserted"] == 1
    again = post(base, "recommend", {"user_id": "u4", "k": 5}).json()
    assert top not in [item["item_id"] for item in again["items"]]

    session = post(base, "recommend_session", {"item_ids": ["i3", "i9"], "k": 3}).json()
    assert session["fallback"] is None and len(session["items"]) == 3
    cold = post(base, "recommend", {"user_id": "stranger", "k": 3}).json()
    assert cold["fallback"] == "popular"
    similar = post(base, "similar_items", {"item_id": "i3", "k": 4}).json()
    assert len(similar["items"]) == 4
    scored = post(base, "score", {"user_id": "u4", "item_ids": ["i1", "nope"]}).json()
    assert scored["unknown_items"] == ["nope"] and len(scored["scores"]) == 1

    metrics = httpx.get(f"{base}/metrics").text
    assert 'recsys_requests_total{endpoint="recommend"}' in metrics
    assert 'recsys_fallbacks_total{endpoint="recommend",fallback="popular"}' in metrics
    assert "recsys_model_version" in metrics
    openapi = httpx.get(f"{base}/docs.json").json()
    assert {"/recommend", "/recommend_session", "/similar_items", "/score", "/events"} <= set(
        openapi["paths"]
    )


@pytest.mark.parametrize(
    ("endpoint", "body", "status", "names"),
    [
        ("recommend", {"user_id": "u1", "k": -1}, 400, "k"),
        ("recommend", {"user_id": "u1", "k": 100000}, 400, "k"),
        ("recommend", {"user_id": 12}, 400, "user_id"),
        ("recommend", {"k": 3}, 400, "user_id"),
        ("recommend", {"user_id": "u1", "filters": {"colour": "red"}}, 400, "colour"),
        ("recommend", {"user_id": "u1", "filters": {"include_genres": ["Opera"]}}, 400, "genre"),
        ("recommend_session", {"item_ids": []}, 400, "item_ids"),
        ("recommend_session", {"item_ids": ["i1"] * 1001}, 400, "item_ids"),
        ("similar_items", {"item_id": "no-such-item"}, 404, "item_id"),
        ("score", {"user_id": "u1", "item_ids": "i1"}, 400, "item_ids"),
        ("events", {"events": [{"user_id": "u1"}]}, 400, "item_id"),
        ("events", {"events": [{"user_id": "u1", "item_id": "i1", "value": "x"}]}, 400, "value"),
    ],
)
def test_http_bad_input_is_a_4xx_naming_the_field(
    served: tuple[str, Any], endpoint: str, body: Any, status: int, names: str
) -> None:
    base, _ = served
    response = post(base, endpoint, body)
    assert response.status_code == status, response.text
    assert names in response.text


def test_http_malformed_json_and_missing_body_are_400(served: tuple[str, Any]) -> None:
    base, _ = served
    for content in (b"{not json", b"", b"[1, 2]"):
        response = httpx.post(
            f"{base}/recommend", content=content, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, response.text


def test_http_schemathesis_finds_no_server_error(served: tuple[str, Any]) -> None:
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    base, _ = served
    schema = schemathesis.openapi.from_url(f"{base}/docs.json")
    failures: list[str] = []
    calls: dict[str, int] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 6

    def fuzz(operation: Any, mode: GenerationMode) -> None:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=15,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            response = case.call(base_url=base, timeout=30)
            key = f"{mode.value} {case.path}"
            calls[key] = calls.get(key, 0) + 1
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.path} {case.body!r}: {response.text}")

        try:
            run()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # e.g. no input to make invalid

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(operation, mode)
    assert failures == []
    assert all(calls.get(f"positive {op.path}", 0) > 0 for op in operations)
    assert sum(n for key, n in calls.items() if key.startswith("negative")) > 30


def test_http_reload_needs_the_admin_token(served: tuple[str, Any]) -> None:
    base, home = served
    assert httpx.post(f"{base}/admin/reload").status_code == 403
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.post(f"{base}/admin/reload", headers=wrong).status_code == 403
    right = {"Authorization": f"Bearer {TOKEN}"}
    response = httpx.post(f"{base}/admin/reload", headers=right)
    assert response.status_code == 200 and response.json()["version"] == home.champion


def test_http_a_new_champion_is_served_without_a_failed_request(served: tuple[str, Any]) -> None:
    base, home = served
    new_version = home.register("sasrec")
    failures: list[str] = []
    versions: list[tuple[float, int]] = []
    stop = threading.Event()

    def client(user: str) -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                try:
                    response = http.post(f"{base}/recommend", json={"user_id": user, "k": 10})
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {response.text}")
                else:
                    versions.append((time.monotonic(), response.json()["model_version"]))

    threads = [threading.Thread(target=client, args=(f"u{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    promoted_at = time.monotonic()
    registry.promote(home.engine, new_version, actor="tests", reason="hot swap")
    deadline = promoted_at + 30
    while time.monotonic() < deadline and not any(v == new_version for _, v in versions):
        time.sleep(0.05)
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)

    assert failures == []
    first_new = min(t for t, v in versions if v == new_version)
    assert first_new - promoted_at <= POLL_SECONDS + 5.0  # poll interval plus load and warm-up
    after = [v for t, v in versions if t > first_new + 0.5]
    assert after and set(after) == {new_version}  # the swap is complete, not flapping
    assert len(versions) > 20
