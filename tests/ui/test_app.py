"""The dashboard application on a real store (in process, through its HTTP interface): the
pages, the actions and their credentials, the rejects files, the host guard, the explorer
answering in process when the service does not, and what the process imports."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from recsys import keys, registry, retrieval
from recsys.catalogue import Catalogue
from recsys.config import get_settings
from recsys.db.queries import user_history
from recsys.online.experiments import get_experiment, running_experiment
from ui.app import create_app

from .conftest import ROOT, Home, build_home, free_port

PAGES = ["/data", "/models", "/models/1", "/online", "/explore", "/flows"]
ADMIN_TOKEN = "admin-token-for-tests-0123456789"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    return build_home(tmp_path_factory.mktemp("ui") / "home")


@pytest.fixture(scope="module")
def api_keys(home: Home) -> dict[str, str]:
    return {
        scope: keys.create_key(home.engine, f"tests-{scope}", [scope])[0]
        for scope in (keys.READ, keys.ADMIN)
    }


@pytest.fixture(scope="module")
def client(home: Home, api_keys: dict[str, str]) -> Iterator[TestClient]:
    settings = get_settings(
        home=home.path,
        database_url=home.url,
        admin_token=ADMIN_TOKEN,
        api_key=api_keys[keys.READ],
        service_url=f"http://127.0.0.1:{free_port()}",  # nothing listens there
    )
    # Pages wait for what they show (the first visit without waiting is tested below).
    app = create_app(settings, home.engine, warm_up=False, first_wait=60.0)
    with TestClient(app, base_url="http://127.0.0.1") as http:
        yield http


def test_a_first_visit_does_not_wait_for_slow_counts_it_reloads_until_they_come(
    home: Home,
) -> None:
    settings = get_settings(home=home.path, database_url=home.url, admin_token=ADMIN_TOKEN)
    app = create_app(settings, home.engine, warm_up=False, first_wait=0.05)
    board = app.state.dashboard
    gate = threading.Event()
    count = board.data._compute

    def slow() -> Any:  # counting a large store: seconds
        assert gate.wait(timeout=30)
        return count()

    board.data._compute = slow
    with TestClient(app, base_url="http://127.0.0.1") as http:
        first = http.get("/data")
        assert first.status_code == 200 and "data-pending" in first.text
        assert '<meta http-equiv="refresh" content="2">' in first.text
        assert 'data-stat="users"' not in first.text
        gate.set()
        deadline = time.monotonic() + 30
        while "data-pending" in (page := http.get("/data")).text:
            assert time.monotonic() < deadline, "the counts never arrived"
            time.sleep(0.05)
        assert 'http-equiv="refresh"' not in page.text and 'data-stat="users"' in page.text


def test_every_page_renders_with_its_server_time(client: TestClient, home: Home) -> None:
    for page in PAGES:
        response = client.get(page)
        assert response.status_code == 200, (page, response.text[:500])
        assert re.fullmatch(r"app;dur=\d+\.\d", response.headers["server-timing"])
        assert "script-src 'self'" in response.headers["content-security-policy"]
        assert str(home.path) not in response.text, page  # written as $RECSYS_HOME/...
    assert client.get("/", follow_redirects=False).headers["location"] == "/data"
    assert client.get("/models/999").status_code == 404
    models = client.get("/models").text
    for version in home.versions:
        assert f'data-version="{version}"' in models
    assert f'id="champion">v{home.champion}<' in models
    assert "$RECSYS_HOME/artifacts/models/v000001-pop" in client.get("/models/1").text
    # A link cannot make the dashboard say that something was done.
    assert "key expired" not in client.get("/models", params={"done": "key expired"}).text
    flows = client.get("/flows").text
    assert 'id="no-prefect"' in flows and "PREFECT_API_URL" in flows


def test_no_secret_reaches_a_page(client: TestClient, api_keys: dict[str, str]) -> None:
    secrets = [ADMIN_TOKEN, *api_keys.values()]
    for page in [*PAGES, "/explore?user=u1"]:
        text = client.get(page).text
        assert not [s for s in secrets if s in text], page
    refused = client.post("/models/promote", data={"version": 1, "reason": "x", "key": "nope"})
    assert "nope" not in refused.text


def _champion(home: Home) -> int | None:
    return registry.alias_version(home.engine, registry.CHAMPION)


def test_changes_need_an_admin_key_and_a_reason(
    client: TestClient, home: Home, api_keys: dict[str, str]
) -> None:
    other = next(v for v in home.versions if v != home.champion)
    form = {"version": other, "reason": "tests: try it", "key": ""}
    assert client.post("/models/promote", data=form).status_code == 401
    assert client.post("/models/promote", data=form | {"key": "rsk_ab_wrong"}).status_code == 401
    read_only = client.post("/models/promote", data=form | {"key": api_keys[keys.READ]})
    assert read_only.status_code == 403 and "do not include admin" in read_only.text
    no_reason = form | {"key": api_keys[keys.ADMIN], "reason": "  "}
    assert client.post("/models/promote", data=no_reason).status_code == 400
    assert _champion(home) == home.champion  # nothing changed

    done = client.post(
        "/models/promote", data=form | {"key": api_keys[keys.ADMIN]}, follow_redirects=False
    )
    assert done.status_code == 303 and done.headers["location"].startswith(f"/models/{other}?")
    assert _champion(home) == other
    move = registry.alias_history(home.engine)[-1]
    assert (move.action, move.from_version, move.to_version) == ("promote", home.champion, other)
    assert move.reason == "tests: try it" and "recsys ui, key 'tests-admin'" in move.actor
    again = client.post("/models/promote", data=form | {"key": api_keys[keys.ADMIN]})
    assert again.status_code == 409 and "already champion" in again.text

    back = client.post("/models/rollback", data={"reason": "tests: undo", "key": ADMIN_TOKEN})
    assert back.status_code == 200 and "champion: v" in back.text  # followed to the page
    assert _champion(home) == home.champion
    assert "recsys ui, admin token" in registry.alias_history(home.engine)[-1].actor


def test_experiments_start_and_stop_with_a_key(
    client: TestClient, home: Home, api_keys: dict[str, str]
) -> None:
    challenger = next(v for v in home.versions if v != home.champion)
    start = {"challenger": challenger, "share": 0.3, "reason": "tests: live", "key": ""}
    assert client.post("/online/experiments/start", data=start).status_code == 401
    assert running_experiment(home.engine) is None
    started = client.post("/online/experiments/start", data=start | {"key": api_keys[keys.ADMIN]})
    assert started.status_code == 200 and "running" in started.text
    experiment = running_experiment(home.engine)
    assert experiment is not None and experiment.challenger_version == challenger
    assert experiment.reason == "tests: live" and "tests-admin" in experiment.started_by
    page = client.get("/online").text
    assert f"#{experiment.id}" in page and "Not enough impressions in both arms yet" in page

    stop = {"decision": "keep", "reason": "tests: enough", "key": api_keys[keys.READ]}
    assert client.post("/online/experiments/stop", data=stop).status_code == 403
    stopped = client.post("/online/experiments/stop", data=stop | {"key": ADMIN_TOKEN})
    assert stopped.status_code == 200
    ended = get_experiment(home.engine, experiment.id)
    assert (ended.status, ended.decision, ended.decision_reason) == (
        "stopped",
        "keep",
        "tests: enough",
    )
    assert ended.results is not None and "differences" in ended.results
    assert _champion(home) == home.champion


def test_rejects_files_are_served_from_the_rejects_folder_only(
    client: TestClient, home: Home
) -> None:
    page = client.get("/data").text
    link = re.search(r'href="(/data/imports/(\d+)/rejects)"', page)
    assert link is not None
    csv = client.get(link.group(1))
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines()[0] == "file,line,reason,raw"
    assert {"bad_timestamp", "missing_id"} <= {
        row.split(",")[2] for row in csv.text.splitlines()[1:]
    }
    with home.engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO imports (kind, source, started_at, rows_read, rows_inserted,"
            " rows_rejected, rows_out_of_order, rejects_path)"
            " VALUES ('csv', 'x', CURRENT_TIMESTAMP, 0, 0, 0, 0, '/etc/passwd')"
        )
        last = conn.exec_driver_sql("SELECT max(id) FROM imports").scalar()
    outside = client.get(f"/data/imports/{last}/rejects")
    assert outside.status_code == 404 and "root:" not in outside.text
    assert client.get("/data/imports/99999/rejects").status_code == 404


def test_only_loopback_names_reach_a_loopback_dashboard(client: TestClient) -> None:
    assert client.get("/data", headers={"host": "localhost:8080"}).status_code == 200
    assert client.get("/data", headers={"host": "evil.example:8080"}).status_code == 421


def test_the_explorer_answers_in_process_when_the_service_does_not(
    client: TestClient, home: Home
) -> None:
    page = client.get("/explore", params={"user": "u1", "k": 5}).text
    assert 'data-source="in-process"' in page and "did not answer" in page
    artifact = registry.load_artifact(home.engine, registry.CHAMPION)
    expected = retrieval.recommend(
        artifact,
        user_history(home.engine, "u1") or [],
        user_id="u1",
        k=5,
        catalogue=Catalogue.load(home.engine, artifact.item_ids),
    )
    shown = re.findall(r'<tr data-item="([^"]+)"', page)
    assert shown == expected.item_ids
    similar = client.get("/explore", params={"item": "i3", "k": 4}).text
    assert len(re.findall(r'<tr data-item="', similar)) == 4 and "i3</a>" not in similar
    unknown = client.get("/explore", params={"item": "no-such-item"}).text
    assert 'id="explore-error"' in unknown and "unknown item" in unknown
    assert client.get("/explore/users.json", params={"q": "u1"}).json()[:2] == ["u1", "u10"]
    assert client.get("/explore/items.json", params={"q": "i3"}).json()[0]["id"] == "i3"


def test_the_dashboard_process_loads_no_torch_prefect_or_bentoml(home: Home) -> None:
    """The contract in .importlinter, checked on a process that rendered every page."""
    code = (
        "import json, sys\n"
        "from fastapi.testclient import TestClient\n"
        "from recsys.config import get_settings\n"
        "from recsys.db.engine import create_engine\n"
        "from ui.app import create_app\n"
        f"settings = get_settings(home={str(home.path)!r}, database_url={home.url!r})\n"
        "app = create_app(settings, create_engine(settings.database_url))\n"
        "with TestClient(app, base_url='http://127.0.0.1') as http:\n"
        f"    for page in {[*PAGES, '/explore?user=u1', '/explore?item=i3']!r}:\n"
        "        assert http.get(page).status_code == 200, page\n"
        "heavy = ('torch', 'prefect', 'bentoml', 'serving', 'flows')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_python_m_ui_refuses_an_outdated_schema(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ui", "--port", str(free_port())],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={
            **os.environ,
            "RECSYS_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}",
        },
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: database schema is at nothing")
