"""The drift monitor flow against a temporary Prefect server: its report, and a retrain
started at most once per cool-down."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterId,
)

from flows.deploy import DEFAULT_NAME, retrain_deployment
from flows.monitor import REPORT_KEY, RETRAIN_DEPLOYMENT, drift_report, monitor_flow
from recsys import registry
from recsys.db.engine import create_engine
from recsys.db.migrate import upgrade
from recsys.online.triggers import recent_triggers

from ..recsys.online.conftest import HOUR_MS, NOW_MS, Champion, promote_champion, traffic


@pytest.fixture
def drifting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_server: None) -> Champion:
    """A home whose champion sees an hour of requests from users it was never trained on."""
    home = tmp_path / "home"
    home.mkdir()
    url = f"sqlite:///{home / 'recsys.db'}"
    upgrade(create_engine(url))
    engine = create_engine(url)
    version = promote_champion(engine, home)
    champion = Champion(engine, version, registry.load_artifact(engine, version))
    strangers = [f"newcomer-{n}" for n in range(200)]
    traffic(champion, start_ms=NOW_MS - HOUR_MS, end_ms=NOW_MS, lists=200, ctr=0.3,
            users=strangers, background=100, seed=11, tag="m")  # fmt: skip
    monkeypatch.setenv("RECSYS_HOME", str(home))
    monkeypatch.setenv("RECSYS_DATABASE_URL", url)
    monkeypatch.setenv("RECSYS_DRIFT_MIN_SAMPLES", "100")
    monkeypatch.setenv("RECSYS_DRIFT_COOLDOWN_SECONDS", "3600")
    monkeypatch.setenv("RECSYS_DRIFT_WINDOW_SECONDS", "7200")  # still seen after the cool-down
    return champion


def flow_runs(deployment_id: UUID) -> list[Any]:
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id])
            )
        )
    return [r for r in runs if "auto-scheduled" not in r.tags]  # not the cron's own runs


def reports() -> list[str]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[REPORT_KEY]))
        )
    return [str(a.data) for a in sorted(found, key=lambda a: a.created or 0)]


@pytest.mark.slow
def test_the_monitor_starts_the_retrain_deployment_once_per_cool_down(
    drifting: Champion,
) -> None:
    name = "retrain/drift-test"
    # No such deployment yet: reported, nothing started, nothing recorded.
    absent = monitor_flow(retrain_deployment=name, now_ms=NOW_MS)
    assert absent["action"] == "no-deployment"
    assert "unknown_users_requests" in absent["tripped"]
    assert recent_triggers(drifting.engine) == []

    deployment_id = retrain_deployment(name="drift-test", models=["pop"]).apply()
    first = monitor_flow(retrain_deployment=name, now_ms=NOW_MS)
    second = monitor_flow(retrain_deployment=name, now_ms=NOW_MS + 5 * 60_000)
    assert first["action"] == "started", first
    assert second["action"] == "cool-down" and f"trigger {first['trigger_id']}" in second["reason"]

    runs = flow_runs(deployment_id)
    assert [str(r.id) for r in runs] == [first["retrain_run_id"]]
    assert "drift" in runs[0].tags
    (trigger,) = recent_triggers(drifting.engine)
    assert trigger["status"] == "started" and trigger["retrain_run_id"] == first["retrain_run_id"]
    assert trigger["deployment"] == name and trigger["champion_version"] == drifting.version
    assert "unknown_users_requests" in [s["name"] for s in trigger["signals"]]

    # After the cool-down the next run may start another.
    third = monitor_flow(retrain_deployment=name, now_ms=NOW_MS + 3_600_000 + 1)
    assert third["action"] == "started"
    assert len(flow_runs(deployment_id)) == 2

    texts = reports()
    assert len(texts) >= 4
    assert "no deployment named retrain/drift-test" in texts[-4]
    started, held = texts[-3], texts[-2]
    assert f"Champion v{drifting.version}" in started
    assert "| unknown_users_requests | 1.0000 | 0.3 | **yes** | 200 |" in started
    assert f"started: flow run {first['retrain_run_id']}" in started
    assert "cool-down: trigger" in held and "the next may start after" in held
    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(first["retrain_run_id"])]))
        )
    assert run.deployment_id == deployment_id


def test_without_a_champion_the_monitor_reports_and_starts_nothing(
    flow_home: dict[str, str],
) -> None:
    result = monitor_flow(retrain_deployment="retrain/none", now_ms=NOW_MS)
    assert result["action"] == "no-champion" and "no champion" in result["reason"]
    assert result["tripped"] == [] and result["drift"] is None
    assert "No signals: there is no champion" in reports()[-1]


def test_the_monitor_targets_the_scheduled_retrain_by_default() -> None:
    assert f"retrain/{DEFAULT_NAME}" == RETRAIN_DEPLOYMENT
    text = drift_report(None, {"reason": "there is no champion model"})
    assert text.startswith("# Drift")
