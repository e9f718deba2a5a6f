"""The retrain flow for real under a temporary Prefect server, and its failure modes."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy.exc import OperationalError

import flows.retrain as retrain_module
from flows.retrain import extract_task, quality_report_task, retrain_flow
from recsys import registry
from recsys.db import locks
from recsys.db.engine import create_engine
from recsys.export import Parity


def engine() -> Any:
    return create_engine(os.environ["RECSYS_DATABASE_URL"])


def test_retrain_tasks_run_as_plain_functions(flow_home: dict[str, str]) -> None:
    snapshot = extract_task.fn(engine(), None)
    assert len(snapshot) == 5000
    assert quality_report_task.fn(snapshot).ok


def _days_ago(stamp_ms: int) -> float:
    return (time.time() * 1000 - stamp_ms) / 86_400_000


def test_a_training_window_extracts_only_the_recent_events(flow_home: dict[str, str]) -> None:
    everything = extract_task.fn(engine(), None)
    stamps = np.sort(everything.occurred_at)
    middle = int(stamps[len(stamps) // 2])
    recent = extract_task.fn(engine(), _days_ago(middle))
    # The window starts a moment after ``middle`` was computed: the older half is out.
    assert 0 < len(recent) < len(everything)
    assert int(recent.occurred_at.min()) > middle - 60_000
    assert len(recent) == int(np.count_nonzero(stamps > recent.descriptor.after_ms))
    assert recent.num_items == everything.num_items  # the catalogue stays whole


def test_the_retrain_flow_trains_on_the_window_the_setting_names(
    flow_home: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    stamps = np.sort(extract_task.fn(engine(), None).occurred_at)
    days = _days_ago(int(stamps[len(stamps) // 4]))  # the newest three quarters
    monkeypatch.setenv("RECSYS_TRAIN_WINDOW_DAYS", f"{days:.6f}")
    result = retrain_flow(models=["pop"])  # kept: popularity cannot beat itself
    assert result["status"] == "kept", result["reason"]
    snapshot = result["snapshot"]
    assert snapshot["after_ms"] is not None
    assert 0.6 * len(stamps) < snapshot["num_interactions"] < 0.8 * len(stamps)
    # The flow's parameter wins over the setting.
    narrower = retrain_flow(models=["pop"], window_days=_days_ago(int(stamps[len(stamps) // 2])))
    assert narrower["snapshot"]["num_interactions"] < snapshot["num_interactions"]
    with pytest.raises(Exception, match="must be positive"):
        retrain_flow(models=["pop"], window_days=-1.0)


def test_retrain_flow_promotes_reports_and_then_skips_unchanged_data(
    flow_home: dict[str, str],
) -> None:
    result = retrain_flow(models=["pop", "ease"])
    assert result["status"] == "promoted", result["reason"]
    versions = {row["model"]: row["version"] for row in result["candidates"]}
    assert result["champion_after"] == versions["ease"] and result["champion_before"] is None
    assert result["gate"]["baseline"] == "popularity" and result["gate"]["ci_low"] > 0
    report = Path(result["report_path"]).read_text()
    assert "## Candidates" in report and "## Gate decision" in report and "PROMOTED" in report
    for row in result["candidates"]:
        assert (Path(row["artifact"]) / "retrain-report.md").exists()
        assert row["parity_max_abs_diff"] is not None and row["parity_max_abs_diff"] <= 1e-4
    record = registry.get_version(engine(), versions["ease"])
    assert record.flow_run_id == result["flow_run_id"]

    again = retrain_flow(models=["pop", "ease"])
    assert again["status"] == "skipped"
    assert again["reason"].startswith(f"no new data since champion v{versions['ease']}")
    assert len(registry.list_versions(engine())) == 2


def test_retrain_flow_registers_a_worse_candidate_without_promoting_it(
    flow_home: dict[str, str],
) -> None:
    first = retrain_flow(models=["ease"])
    champion = first["champion_after"]
    worse = retrain_flow(models=["pop"], force=True)
    assert worse["status"] == "kept" and worse["champion_after"] == champion
    (row,) = worse["candidates"]
    assert registry.get_version(engine(), row["version"]).status == "ready"
    assert worse["gate"]["diff"] < 0 and worse["gate"]["baseline"] == f"champion v{champion}"


def test_retrain_flow_retries_a_transient_database_error(
    flow_home: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real_extract = retrain_module.extract

    def flaky(url: str, **options: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OperationalError("SELECT ...", {}, Exception("database is locked"))
        return real_extract(url, **options)

    monkeypatch.setattr(retrain_module, "extract", flaky)
    monkeypatch.setattr(retrain_module.extract_task, "retry_delay_seconds", [0.1])
    result = retrain_flow(models=["ease"])
    assert result["status"] == "promoted" and calls["n"] == 2


def test_retrain_flow_crash_in_training_fails_the_run_and_keeps_the_champion(
    flow_home: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    champion = retrain_flow(models=["ease"])["champion_after"]
    real_train = retrain_module.train_and_evaluate

    def crash(url: str, name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "sasrec":
            raise RuntimeError("out of memory while training sasrec")
        return real_train(url, name, *args, **kwargs)

    monkeypatch.setattr(retrain_module, "train_and_evaluate", crash)
    state = retrain_flow(models=["ease", "sasrec"], force=True, return_state=True)
    assert state.is_failed() and "out of memory" in str(state.message)
    assert registry.alias_version(engine()) == champion
    locks.acquire(engine(), "retrain", holder="check", ttl=timedelta(hours=1))  # released


def test_retrain_flow_parity_failure_fails_the_run_and_keeps_the_champion(
    flow_home: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    champion = retrain_flow(models=["ease"])["champion_after"]
    import recsys.export as export_module

    def broken(model: Any, path: Any, batches: Any, atol: float = 1e-4) -> Parity:
        return Parity(False, 0.5, 0.2, [[37, 5]], atol, "max |onnx - torch| = 0.5 exceeds 0.0001")

    monkeypatch.setattr(export_module, "check_parity", broken)
    state = retrain_flow(models=["ease"], force=True, return_state=True)
    assert state.is_failed() and "nothing promoted" in str(state.message)
    assert registry.alias_version(engine()) == champion
    statuses = [r.status for r in registry.list_versions(engine())]
    assert statuses.count("unservable") == 1


def test_retrain_flow_does_not_run_while_another_retrain_holds_the_lock(
    flow_home: dict[str, str],
) -> None:
    from datetime import timedelta

    locks.acquire(engine(), "retrain", holder="flow run other", ttl=timedelta(hours=1))
    state = retrain_flow(models=["ease"], return_state=True)
    assert state.is_failed() and "already running" in str(state.message)
    assert registry.list_versions(engine()) == []
    locks.release(engine(), "retrain", holder="flow run other")
    assert retrain_flow(models=["ease"])["status"] == "promoted"


@pytest.mark.slow
def test_retrain_flow_promotion_builds_a_bento_and_reloads_the_running_service(
    flow_home: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    import httpx

    sys.path.insert(0, str(Path(__file__).parents[1] / "serving"))
    from conftest import bentoml_serve  # the serving tests' helper

    first = retrain_flow(models=["ease"])["champion_after"]
    token = "flow-test-token"
    monkeypatch.setenv("RECSYS_ADMIN_TOKEN", token)
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    env = {**flow_home, "RECSYS_ADMIN_TOKEN": token, "RECSYS_POLL_SECONDS": "3600"}
    auth = {"Authorization": f"Bearer {token}"}  # the admin credential also reads
    root = Path(__file__).parents[2]
    with bentoml_serve("serving.service:RecsysService", env, root, tmp_path / "serve.log") as base:
        assert httpx.post(f"{base}/model", headers=auth).json()["model_version"] == first
        # A margin of -1 accepts any servable candidate: the point here is what follows it.
        result = retrain_flow(
            models=["pop"], force=True, margin=-1.0, build_bento=True, service_url=base
        )
        assert result["status"] == "promoted"
        new = result["champion_after"]
        assert new != first and result["bento"].startswith("recsys:")
        assert result["service_reload"]["version"] == new
        # Served at once, though the service would not poll for an hour.
        assert httpx.post(f"{base}/model", headers=auth).json()["model_version"] == new


@pytest.mark.slow
def test_the_retrain_flow_trains_a_candidate_in_two_processes(flow_home: dict[str, str]) -> None:
    result = retrain_flow(models=["gru4rec"], nproc=2, budget_seconds=20.0)
    assert result["status"] in {"promoted", "kept"}, result["reason"]
    (row,) = result["candidates"]
    assert row["model"] == "gru4rec" and row["status"] == "ready"
    assert len(registry.list_versions(engine())) == 1  # registered once


@pytest.mark.slow
def test_training_progress_reaches_the_run_logs_and_a_progress_artifact(
    flow_home: dict[str, str],
) -> None:
    """Each epoch of a candidate is a line of its task run's log in Prefect (model, epoch,
    validation score, time left of the budget) and moves its progress artifact."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        LogFilter,
        LogFilterFlowRunId,
    )

    result = retrain_flow(models=["gru4rec"], budget_seconds=30.0)
    run_id = UUID(result["flow_run_id"])
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["training-gru4rec"]))
        )
    lines = [log.message for log in logs if log.message.startswith("progress gru4rec: epoch")]
    assert lines, [log.message for log in logs]
    assert lines[0].startswith("progress gru4rec: epoch 1/")
    assert "valid ndcg@10" in lines[0] and "s left of 30 s" in lines[0]
    assert artifacts and artifacts[0].type == "progress" and artifacts[0].data == 100.0


def test_a_refit_trains_the_promoted_candidate_on_every_event_and_serves_it(
    flow_home: dict[str, str],
) -> None:
    result = retrain_flow(models=["ease"], refit=True)
    assert result["status"] == "promoted", result["reason"]
    (row,) = result["candidates"]
    measured = registry.get_version(engine(), row["version"])
    refit = result["refit"]
    assert refit["of"] == measured.version and "error" not in refit
    champion = registry.get_version(engine(), result["champion_after"])
    assert champion.version == refit["version"] != measured.version
    assert result["reason"].startswith(f"v{champion.version} (ease, v{measured.version} refit")
    assert champion.training is not None and champion.training["refit_of"] == measured.version
    # Every event trains: the held-out validation and test targets too.
    assert champion.training["split"]["train_events"] == 5000
    assert measured.training is not None and measured.training["split"]["train_events"] < 5000
    assert champion.params == measured.params  # EASE's chosen l2, not searched again
    assert champion.metrics == measured.metrics  # what was measured stands for it
    assert "refit: v" in Path(result["report_path"]).read_text()
    # The next gate measures the champion through the run it is a refit of.
    again = retrain_flow(models=["pop"], force=True, refit=True)
    assert again["status"] == "kept" and again["refit"] is None
    assert again["gate"]["baseline"] == (
        f"champion v{champion.version} (as measured: v{measured.version}, of which it is a refit)"
    )


def test_a_failed_refit_leaves_the_gates_choice_champion(
    flow_home: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("out of memory while refitting")

    monkeypatch.setattr(retrain_module, "refit_model", crash)
    result = retrain_flow(models=["ease"], refit=True)
    assert result["status"] == "promoted"
    (row,) = result["candidates"]
    assert result["champion_after"] == row["version"] == registry.alias_version(engine())
    assert "out of memory while refitting" in result["refit"]["error"]
    assert "its refit did not replace it" in result["reason"]
    assert [r.version for r in registry.list_versions(engine())] == [row["version"]]
