"""The flows page against a real (temporary) Prefect server: its deployments and their latest
runs through the REST API, linked into the Prefect UI; and an unreachable server said so."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from recsys.config import get_settings
from ui.app import create_app
from ui.prefect_api import PrefectApi

from .conftest import Home, build_home, free_port


@pytest.fixture(scope="module")
def prefect_url() -> Iterator[str]:
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


@pytest.mark.slow
def test_deployments_and_their_runs_link_into_the_prefect_ui(
    prefect_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    flow = httpx.post(f"{prefect_url}/flows/", json={"name": "retrain"}).json()
    deployment = httpx.post(
        f"{prefect_url}/deployments/",
        json={
            "name": "nightly",
            "flow_id": flow["id"],
            "schedules": [{"schedule": {"cron": "0 3 * * *"}}],
        },
    ).json()
    runs = [
        httpx.post(f"{prefect_url}/deployments/{deployment['id']}/create_flow_run", json={}).json()
        for _ in range(7)
    ]
    api = PrefectApi.from_environment({"PREFECT_API_URL": prefect_url})
    assert api is not None and api.ui_url == prefect_url.removesuffix("/api")
    found = api.flows(runs_per_deployment=5)
    assert found.error is None
    (listed,) = [d for d in found.deployments if d.id == deployment["id"]]
    assert (listed.flow_name, listed.name, listed.schedules) == (
        "retrain",
        "nightly",
        ["cron 0 3 * * *"],
    )
    assert listed.url == f"{api.ui_url}/deployments/deployment/{deployment['id']}"
    assert len(listed.runs) == 5 and {r.id for r in listed.runs} <= {r["id"] for r in runs}
    assert all(r.state == "SCHEDULED" and r.url.endswith(r.id) for r in listed.runs)

    home: Home = build_home(tmp_path_factory.mktemp("flows") / "home", events=3000)
    settings = get_settings(home=home.path, database_url=home.url)
    app = create_app(settings, home.engine, prefect=api, warm_up=False)
    with TestClient(app, base_url="http://127.0.0.1") as http:
        page = http.get("/flows").text
    assert 'data-deployment="retrain/nightly"' in page
    assert f'href="{listed.runs[0].url}"' in page and "Scheduled" in page


def test_an_unreachable_prefect_server_is_said_so() -> None:
    api = PrefectApi(f"http://127.0.0.1:{free_port()}/api", "http://ui.example")
    found = api.flows()
    assert found.deployments == [] and found.error is not None
    assert found.error.startswith("the Prefect API did not answer")
    assert api.run_url("abc") == "http://ui.example/runs/flow-run/abc"
    assert PrefectApi.from_environment({}) is None
    keyed = PrefectApi.from_environment({"PREFECT_API_URL": "http://x/api", "PREFECT_API_KEY": "k"})
    assert keyed is not None and keyed._headers == {"Authorization": "Bearer k"}
