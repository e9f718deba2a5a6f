"""One real `bentoml serve` process over HTTP: endpoints, health, bad input, fuzzing, hot swap."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from recsys import registry
from recsys.keys import create_key, revoke_key

sys.path.insert(0, str(Path(__file__).parent))
from conftest import bentoml_serve, free_port, make_home, running

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-admin-token"
POLL_SECONDS = 1.0


@dataclass
class Served:
    base: str
    home: Any
    log: Path
    keys: dict[str, str]

    def post(self, endpoint: str, body: Any, key: str | None = "read") -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.keys[key]}"} if key else {}
        return httpx.post(f"{self.base}/{endpoint}", json=body, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = make_home(tmp_path_factory.mktemp("http") / "home")
    keys = {
        scope: create_key(home.engine, f"tests-{scope}", [scope])[0]
        for scope in ("read", "events", "admin")
    }
    env = {
        **home.env,
        "RECSYS_POLL_SECONDS": str(POLL_SECONDS),
        "RECSYS_ADMIN_TOKEN": TOKEN,
        "RECSYS_BODY_TIMEOUT_SECONDS": "2",
        "RECSYS_MAX_BODY_BYTES": "200000",
    }
    log = home.path / "serve.log"
    with bentoml_serve("serving.service:RecsysService", env, ROOT, log) as base:
        yield Served(base, home, log, keys)


def _error_shape(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"status", "reason", "message", "field"}, body
    assert body["status"] == response.status_code
    return dict(body)


def test_http_endpoints_health_and_metrics(served: Served) -> None:
    base, home = served.base, served.home
    assert httpx.get(f"{base}/healthz").status_code == 200
    assert httpx.get(f"{base}/readyz").status_code == 200

    first = served.post("recommend", {"user_id": "u4", "k": 5, "explain": True})
    assert first.status_code == 200, first.text
    data = first.json()
    assert data["model_version"] == home.champion and len(data["items"]) == 5
    assert all(item["because"] for item in data["items"])

    top = data["items"][0]["item_id"]
    recorded = served.post("events", {"events": [{"user_id": "u4", "item_id": top}]}, "events")
    assert recorded.status_code == 200 and recorded.json()["inserted"] == 1
    again = served.post("recommend", {"user_id": "u4", "k": 5}).json()
    assert top not in [item["item_id"] for item in again["items"]]

    session = served.post("recommend_session", {"item_ids": ["i3", "i9"], "k": 3}).json()
    assert session["fallback"] is None and len(session["items"]) == 3
    cold = served.post("recommend", {"user_id": "stranger", "k": 3}).json()
    assert cold["fallback"] == "popular"
    similar = served.post("similar_items", {"item_id": "i3", "k": 4}).json()
    assert len(similar["items"]) == 4
    scored = served.post("score", {"user_id": "u4", "item_ids": ["i1", "nope"]}).json()
    assert scored["unknown_items"] == ["nope"] and len(scored["scores"]) == 1
    model = httpx.get(f"{base}/model", headers={"Authorization": f"Bearer {served.keys['read']}"})
    assert model.json()["model_version"] == home.champion

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
        ("recommend", {"user_id": "u1", "filters": {"colour": "red"}}, 400, "filters.colour"),
        ("recommend", {"user_id": "u1", "filtres": {"exclude_items": ["i1"]}}, 400, "filtres"),
        ("recommend", {"user_id": "u1", "explain": 0}, 400, "explain"),
        ("recommend", {"user_id": "u1", "k": "3"}, 400, "k"),
        ("recommend", {"user_id": "a\u0000b"}, 400, "user_id"),
        ("recommend", {"user_id": "a\u0085b"}, 400, "user_id"),
        ("recommend_session", {"item_ids": []}, 400, "item_ids"),
        ("recommend_session", {"item_ids": ["i1"] * 1001}, 400, "item_ids"),
        ("similar_items", {"item_id": "no-such-item"}, 404, "item_id"),
        ("score", {"user_id": "u1", "item_ids": "i1"}, 400, "item_ids"),
        ("events", {"events": [{"user_id": "u1"}]}, 400, "item_id"),
        ("events", {"events": [{"user_id": "u1", "item_id": "i1", "value": "x"}]}, 400, "value"),
        ("events", {"events": [{"user_id": "u1", "item_id": "'; DROP"}]}, 404, "item_id"),
        (
            "events",
            {"events": [{"user_id": "u1", "item_id": "i1", "occurred_at": "2999-01-01T00:00Z"}]},
            400,
            "occurred_at",
        ),
    ],
)
def test_http_bad_input_is_a_4xx_naming_the_field(
    served: Served, endpoint: str, body: Any, status: int, names: str
) -> None:
    key = "events" if endpoint == "events" else "read"
    response = served.post(endpoint, body, key)
    assert response.status_code == status, response.text
    error = _error_shape(response)
    assert names in (error["field"] or ""), error
    assert error["reason"] in ("bad_input", "not_found", "unknown_item")


def test_http_malformed_json_and_missing_body_are_400(served: Served) -> None:
    headers = {"Authorization": f"Bearer {served.keys['read']}"}
    for content in (b"{not json", b"", b"[1, 2]"):
        response = httpx.post(
            f"{served.base}/recommend",
            content=content,
            headers={**headers, "content-type": "application/json"},
        )
        assert response.status_code == 400, response.text
        _error_shape(response)


def test_http_body_must_be_json_small_and_prompt(served: Served) -> None:
    """Regression: text/plain was parsed as JSON, 60 MB were accepted, a slow body waited 30 s."""
    headers = {"Authorization": f"Bearer {served.keys['read']}"}
    body = json.dumps({"user_id": "u1"}).encode()
    plain = httpx.post(
        f"{served.base}/recommend", content=body, headers={**headers, "content-type": "text/plain"}
    )
    assert plain.status_code == 415 and _error_shape(plain)["reason"] == "unsupported_media_type"
    big = json.dumps({"user_id": "u1", "filters": {"exclude_items": ["x" * 250] * 1000}})
    large = httpx.post(
        f"{served.base}/recommend",
        content=big.encode(),
        headers={**headers, "content-type": "application/json"},
    )
    assert large.status_code == 413 and _error_shape(large)["reason"] == "payload_too_large"

    host, port = served.base.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(
            b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {served.keys['read']}\r\n".encode()
            + b"Content-Length: 100\r\n\r\n{"
        )
        reply = sock.recv(4096).decode()
    assert reply.startswith("HTTP/1.1 408"), reply
    assert time.monotonic() - started < 10  # the 2 s body deadline, not the 30 s request one


def test_http_every_endpoint_needs_a_key_with_its_scope(served: Served) -> None:
    """Regression: one anonymous POST /events rewrote a user's recommendations."""
    event = {"events": [{"user_id": "u42", "item_id": "i1"}]}
    anonymous = served.post("events", event, key=None)
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
    assert _error_shape(anonymous)["reason"] == "unauthorized"
    assert served.post("events", event, key="read").status_code == 403
    assert served.post("recommend", {"user_id": "u42"}, key=None).status_code == 401
    assert served.post("recommend", {"user_id": "u42"}, key="events").status_code == 403
    assert served.post("recommend", {"user_id": "u42"}, key="admin").status_code == 200
    assert httpx.post(f"{served.base}/model").status_code == 401
    lower = {"Authorization": f"bearer {served.keys['read']}"}  # the scheme is case-insensitive
    assert httpx.post(f"{served.base}/model", headers=lower).status_code == 200
    forged = served.keys["read"][:-4] + "AAAA"
    assert (
        httpx.post(
            f"{served.base}/model", headers={"Authorization": f"Bearer {forged}"}
        ).status_code
        == 401
    )

    key, _ = create_key(served.home.engine, "short-lived", ["read"])
    auth = {"Authorization": f"Bearer {key}"}
    assert httpx.post(f"{served.base}/model", headers=auth).status_code == 200
    revoke_key(served.home.engine, "short-lived")
    deadline = time.monotonic() + 15
    while httpx.post(f"{served.base}/model", headers=auth).status_code != 401:
        assert time.monotonic() < deadline, "a revoked key was still accepted after 15 s"
        time.sleep(0.5)


def test_http_model_info_shows_no_paths_and_bad_requests_log_no_tracebacks(
    served: Served,
) -> None:
    info = served.post("model", None).text
    assert str(served.home.path) not in info
    served.post("recommend", {"user_id": "u1", "k": -1})
    assert "Traceback" not in served.log.read_text()


@pytest.mark.slow
def test_http_schemathesis_all_checks_pass(served: Served) -> None:
    """The published contract is the real one: every schemathesis check, conformance too."""
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("st")),
            "--config-file",
            str(Path(__file__).with_name("schemathesis.toml")),
            "run",
            f"{served.base}/docs.json",
            "--checks",
            "all",
            "--header",
            f"Authorization: Bearer {served.keys['admin']}",
            "--max-examples",
            "15",
            "--max-time",
            "40",
            "--workers",
            "2",
            "--request-timeout",
            "30",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    summary = done.stdout[-3000:]
    assert done.returncode == 0, done.stdout[-12000:]
    assert "Tested: 11" in summary and " passed" in summary, summary


def test_http_reload_needs_the_admin_token(served: Served) -> None:
    base, home = served.base, served.home
    assert httpx.post(f"{base}/admin/reload").status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.post(f"{base}/admin/reload", headers=wrong).status_code == 401
    reader = {"Authorization": f"Bearer {served.keys['read']}"}
    assert httpx.post(f"{base}/admin/reload", headers=reader).status_code == 403
    for right in (TOKEN, served.keys["admin"]):
        response = httpx.post(f"{base}/admin/reload", headers={"Authorization": f"Bearer {right}"})
        assert response.status_code == 200 and response.json()["version"] == home.champion


def test_http_a_new_champion_is_served_without_a_failed_request(served: Served) -> None:
    base, home = served.base, served.home
    auth = {"Authorization": f"Bearer {served.keys['read']}"}
    new_version = home.register("sasrec")
    failures: list[str] = []
    versions: list[tuple[float, int]] = []
    stop = threading.Event()

    def client(user: str) -> None:
        with httpx.Client(timeout=30, headers=auth) as http:
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


@pytest.mark.slow
def test_http_two_services_sharing_a_bentoml_home_keep_their_own_metrics(
    served: Served, tmp_path: Path
) -> None:
    """Regression: each `bentoml serve` emptied the shared Prometheus folder at start, so the
    first service's /metrics then showed the second one's counts."""
    env = {**served.home.env, "BENTOML_HOME": str(tmp_path / "bentoml")}
    auth = {"Authorization": f"Bearer {served.keys['read']}"}

    def recommends(base: str) -> float:
        for line in httpx.get(f"{base}/metrics").text.splitlines():
            if line.startswith('recsys_requests_total{endpoint="recommend"}'):
                return float(line.split()[-1])
        return 0.0

    with bentoml_serve("serving.service:RecsysService", env, ROOT, tmp_path / "a.log") as first:
        for _ in range(3):
            httpx.post(f"{first}/recommend", json={"user_id": "u1"}, headers=auth)
        assert recommends(first) == 3.0
        with bentoml_serve(
            "serving.service:RecsysService", env, ROOT, tmp_path / "b.log"
        ) as second:
            httpx.post(f"{second}/recommend", json={"user_id": "u1"}, headers=auth)
            assert recommends(first) == 3.0
            assert recommends(second) == 1.0


def _metric(text: str, name: str) -> list[float]:
    """The values of the samples called ``name`` (any labels) in a Prometheus text page."""
    return [
        float(line.split()[-1])
        for line in text.splitlines()
        if line.split("{")[0].split(" ")[0] == name
    ]


@pytest.mark.slow
def test_http_two_workers_take_up_a_new_champion_under_load_and_count_every_request(
    tmp_path: Path,
) -> None:
    """`recsys serve --workers 2`: each worker follows the champion on its own. Under load
    (a new connection per request, so both workers answer), a promotion fails no request,
    each worker serves the new version within the poll interval (plus loading) and never
    the old one after, and any worker's /metrics counts every request once."""
    home = make_home(tmp_path / "home")
    new_version = home.register("sasrec")  # trained before the server competes for the CPU
    auth = {"Authorization": f"Bearer {create_key(home.engine, 'workers', ['read'])[0]}"}
    port = free_port()
    command = [str(Path(sys.executable).with_name("recsys")), "serve", "--workers", "2"]
    env = {
        **home.env,
        "RECSYS_POLL_SECONDS": str(POLL_SECONDS),
        "BENTOML_HOME": str(tmp_path / "bentoml"),
    }
    fresh = httpx.Limits(max_keepalive_connections=0)  # each request may reach either worker

    def until_both(path: str) -> dict[str, httpx.Response]:
        answers: dict[str, httpx.Response] = {}
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=base, limits=fresh, timeout=30) as http:
            while len(answers) < 2 and time.monotonic() < deadline:
                response = http.get(path)
                if response.status_code == 200:
                    answers[response.headers["x-recsys-worker"]] = response
        return answers

    log = tmp_path / "serve.log"
    with running([*command, "--port", str(port)], port, env, tmp_path, log, 120) as base:
        assert set(until_both("/readyz")) == {"1", "2"}, log.read_text()[-3000:]
        failures: list[str] = []
        answered: list[tuple[float, str, int]] = []  # (when, worker, version)
        stop = threading.Event()

        def client(user: str) -> None:
            with httpx.Client(base_url=base, limits=fresh, timeout=30, headers=auth) as http:
                while not stop.is_set():
                    try:
                        response = http.post("/recommend", json={"user_id": user, "k": 10})
                    except httpx.HTTPError as exc:
                        failures.append(repr(exc))
                        continue
                    if response.status_code != 200:
                        failures.append(f"{response.status_code}: {response.text}")
                        continue
                    worker = response.headers["x-recsys-worker"]
                    answered.append((time.monotonic(), worker, response.json()["model_version"]))

        threads = [threading.Thread(target=client, args=(f"u{n}",)) for n in range(6)]
        for thread in threads:
            thread.start()
        try:
            deadline = time.monotonic() + 30
            while {w for _, w, _ in answered} != {"1", "2"} and time.monotonic() < deadline:
                time.sleep(0.1)
            promoted_at = time.monotonic()
            registry.promote(home.engine, new_version, actor="tests", reason="two workers")
            deadline = promoted_at + 30
            while time.monotonic() < deadline and {
                w for _, w, v in answered if v == new_version
            } != {"1", "2"}:
                time.sleep(0.05)
            time.sleep(1.0)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)

        assert failures == []
        by_worker = {w: [(t, v) for t, x, v in answered if x == w] for w in ("1", "2")}
        for worker, seen in by_worker.items():
            assert any(v == home.champion for t, v in seen if t < promoted_at), worker
            first_new = min((t for t, v in seen if v == new_version), default=None)
            assert first_new is not None, f"worker {worker} never served v{new_version}"
            assert first_new - promoted_at <= POLL_SECONDS + 5.0, worker  # poll + load
            after = [v for t, v in seen if t > first_new + 0.5]
            assert set(after) <= {new_version}, worker  # no flapping back

        pages = until_both("/metrics")
        assert set(pages) == {"1", "2"}  # /metrics answered by each worker ...
        for page in (r.text for r in pages.values()):  # ... and each adds up both
            requests = _metric(page, "recsys_requests_total")
            assert requests == [float(len(answered))], page[:2000]
            assert _metric(page, "recsys_recommend_batch_size_sum") == requests
            assert _metric(page, "recsys_model_version") == [float(new_version)] * 2


def test_http_a_source_sync_takes_an_item_out_of_every_list_within_a_poll(
    served: Served, tmp_path: Path
) -> None:
    """An item source marks the top item out of stock and renames the next one: after the
    sync, the running service stops recommending the first and shows the new title and price
    within one poll, with no new model; back in stock, it returns."""
    import sqlalchemy as sa

    from recsys.sources.config import parse_source
    from recsys.sources.sync import sync_source

    home = served.home
    version = served.post("model", {}).json()["model_version"]
    top = [
        i["item_id"] for i in served.post("recommend", {"user_id": "u9", "k": 10}).json()["items"]
    ]
    gone, renamed = top[0], top[1]
    shop = sa.create_engine(f"sqlite:///{tmp_path / 'shop.db'}")
    with shop.begin() as conn, home.engine.connect() as store:
        conn.execute(sa.text("CREATE TABLE products (sku TEXT, name TEXT, price REAL, stock INT)"))
        ids = store.execute(sa.text("SELECT external_id, title FROM items")).all()
        conn.execute(
            sa.text("INSERT INTO products VALUES (:sku, :name, NULL, 1)"),
            [{"sku": sku, "name": title} for sku, title in ids],
        )
    body = {
        "url": str(shop.url),
        "table": "products",
        "items": {"id": "sku", "title": "name", "price": "price", "available": "stock"},
    }
    source = parse_source("products", body)

    def sync(sql: str) -> None:
        with shop.begin() as conn:
            conn.execute(sa.text(sql))
        sync_source(home.engine, source, tmp_path / "rejects")

    def lists() -> dict[str, list[dict[str, Any]]]:
        return {
            "user": served.post("recommend", {"user_id": "u9", "k": 50}).json()["items"],
            "cold": served.post("recommend", {"user_id": "nobody", "k": 50}).json()["items"],
            "session": served.post("recommend_session", {"item_ids": [renamed], "k": 50}).json()[
                "items"
            ],
            "similar": served.post("similar_items", {"item_id": renamed, "k": 50}).json()["items"],
        }

    def wait_for(condition: Any) -> float:
        synced = time.monotonic()
        while not condition(lists()):
            assert time.monotonic() - synced < POLL_SECONDS + 10, "the change never reached serving"
            time.sleep(0.1)
        return time.monotonic() - synced

    sync_source(home.engine, source, tmp_path / "rejects")  # it describes every item now
    sync(f"UPDATE products SET stock = 0 WHERE sku = '{gone}'")
    sync(f"UPDATE products SET name = 'Renamed', price = 1.5 WHERE sku = '{renamed}'")
    wait_for(lambda found: all(gone not in [i["item_id"] for i in v] for v in found.values()))
    first = served.post("recommend", {"user_id": "u9", "k": 1}).json()["items"][0]
    assert (first["item_id"], first["title"]) == (renamed, "Renamed")
    cheap = served.post(
        "recommend", {"user_id": "u9", "k": 2, "filters": {"max_price": 2.0}}
    ).json()["items"]
    assert cheap[0]["item_id"] == renamed and cheap[0]["matches_filters"]
    assert served.post("model", {}).json()["model_version"] == version  # no new model

    sync(f"UPDATE products SET stock = 1 WHERE sku = '{gone}'")
    wait_for(lambda found: gone in [i["item_id"] for i in found["user"]])
    shop.dispose()


def test_http_lists_carry_a_recommendation_id_that_events_may_name(served: Served) -> None:
    import sqlalchemy as sa

    shown = served.post("recommend", {"user_id": "u11", "k": 3}).json()
    rid = shown["recommendation_id"]
    assert len(rid) == 32 and shown["arm"] is None
    session = served.post("recommend_session", {"item_ids": ["i1"], "session_id": "v-1"}).json()
    similar = served.post("similar_items", {"item_id": "i2", "user_id": "u11"}).json()
    assert len({rid, session["recommendation_id"], similar["recommendation_id"]}) == 3
    event = {"user_id": "u11", "item_id": shown["items"][0]["item_id"], "event_type": "click"}
    recorded = served.post("events", {"events": [event | {"recommendation_id": rid}]}, key="events")
    assert recorded.status_code == 200, recorded.text
    bad = served.post("events", {"events": [event | {"recommendation_id": "x"}]}, key="events")
    assert bad.status_code == 400 and bad.json()["field"].endswith("recommendation_id")
    deadline = time.monotonic() + 10  # the log writes within a second
    with served.home.engine.connect() as conn:
        while time.monotonic() < deadline:
            found = conn.execute(
                sa.text("SELECT endpoint, user_id FROM impressions WHERE id = :id"), {"id": rid}
            ).all()
            if found:
                break
            time.sleep(0.2)
        linked = conn.execute(
            sa.text("SELECT count(*) FROM event_recommendations WHERE recommendation_id = :id"),
            {"id": rid},
        ).scalar_one()
    assert found == [("recommend", "u11")] and linked == 1


@pytest.mark.slow
def test_http_an_experiment_starts_and_stops_without_a_failed_request(served: Served) -> None:
    from recsys.online.experiments import get_experiment, start_experiment
    from recsys.online.outcomes import experiment_status, stop_experiment

    home = served.home
    challenger = home.register("pop")
    auth = {"Authorization": f"Bearer {served.keys['read']}"}
    failures: list[str] = []
    seen: list[tuple[float, str, str | None]] = []
    stop = threading.Event()

    def client(first: int) -> None:
        n = first
        with httpx.Client(timeout=30, headers=auth) as http:
            while not stop.is_set():
                user = f"u{n % 40 + 1}"
                n += 1
                try:
                    response = http.post(f"{served.base}/recommend", json={"user_id": user})
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {response.text}")
                else:
                    seen.append((time.monotonic(), user, response.json()["arm"]))

    threads = [threading.Thread(target=client, args=(n * 10,)) for n in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    experiment = start_experiment(home.engine, challenger, 0.5, actor="tests", reason="http")
    started = time.monotonic()
    deadline = started + POLL_SECONDS + 30
    while time.monotonic() < deadline and not any(a == "challenger" for _, _, a in seen):
        time.sleep(0.05)
    time.sleep(max(1.0, started + POLL_SECONDS + 7 - time.monotonic()))
    settled = [(u, a) for t, u, a in seen if t > started + POLL_SECONDS + 5]
    model = served.post("model", {}).json()
    status = experiment_status(
        home.engine,
        get_experiment(home.engine, experiment.id),
        click_events=["click"],
        conversion_events=["purchase"],
        window_seconds=60,
    )
    stop_experiment(home.engine, "keep", actor="tests", reason="done", status=status)
    stopped = time.monotonic()
    deadline = stopped + POLL_SECONDS + 30
    while time.monotonic() < deadline and not any(
        t > stopped + POLL_SECONDS + 1 and a is None for t, _, a in seen
    ):
        time.sleep(0.05)
    time.sleep(max(0.5, stopped + POLL_SECONDS + 7 - time.monotonic()))
    stop.set()
    for thread in threads:
        thread.join(timeout=30)

    assert failures == []
    assert model["experiment_id"] == experiment.id and model["challenger_version"] == challenger
    assert settled and all(a == experiment.arm(u) for u, a in settled)  # each user, one arm
    assert {a for _, a in settled} == {"champion", "challenger"}
    after = [a for t, _, a in seen if t > stopped + POLL_SECONDS + 5]
    assert after and set(after) == {None}


@pytest.mark.slow
def test_http_impressions_survive_a_restart_of_the_service(served: Served, tmp_path: Path) -> None:
    """What a service logged is in the database after it stops (a clean stop writes what is
    still buffered), and a new service adds to it: nothing flushed is lost across restarts."""
    import sqlalchemy as sa

    home = served.home
    # A long flush interval: only the shutdown can write these in time.
    env = {
        **home.env,
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "RECSYS_READ_AUTH": "open",
        "RECSYS_IMPRESSION_FLUSH_SECONDS": "600",
    }
    marker = f"restart-{time.monotonic_ns()}"

    def logged() -> int:
        with home.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text("SELECT count(*) FROM impressions WHERE session_id = :s"),
                    {"s": marker},
                ).scalar_one()
            )

    ids: list[str] = []
    for run in range(2):
        with bentoml_serve(
            "serving.service:RecsysService", env, ROOT, tmp_path / f"run-{run}.log"
        ) as base:
            for n in range(5):
                body = {"item_ids": [f"i{n + 1}"], "k": 3, "session_id": marker}
                answer = httpx.post(f"{base}/recommend_session", json=body, timeout=30)
                assert answer.status_code == 200, answer.text
                ids.append(answer.json()["recommendation_id"])
            time.sleep(1.0)
            assert logged() == 5 * run  # still buffered: the flush is 10 minutes away
        assert logged() == 5 * (run + 1)  # the stop wrote the rest; the first run's are kept
    with home.engine.connect() as conn:
        stored = set(
            conn.execute(
                sa.text("SELECT id FROM impressions WHERE session_id = :s"), {"s": marker}
            ).scalars()
        )
    assert stored == set(ids)
