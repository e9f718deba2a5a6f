"""The tune flow under a temporary Prefect server, and the retrain training with what it found."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.retrain import retrain_flow
from flows.tune import tune_flow
from recsys import registry, tuned
from recsys.db.engine import create_engine
from recsys.tuned import TunedSettings


def engine() -> Any:
    return create_engine(os.environ["RECSYS_DATABASE_URL"])


def test_the_tune_flow_records_the_best_trial_and_publishes_its_report(
    flow_home: dict[str, str],
) -> None:
    result = tune_flow(models=["ease"], trials=3, budget_seconds=120)
    (row,) = result["tuned"]
    assert row["family"] == "ease" and row["trials"] == 3 and set(row["params"]) == {"l2"}
    found = tuned.latest(engine(), "ease")
    assert found is not None and found.id == row["id"] and found.params == row["params"]
    home = Path(flow_home["RECSYS_HOME"]) / "reports"
    run_id = result["flow_run_id"]
    assert Path(row["report"]) == home / f"tune-ease-{run_id}.md"
    assert Path(row["plot"]).read_bytes().startswith(b"\x89PNG")
    with get_client(sync_client=True) as client:
        keys = ["tune-ease", "tune-ease-plot", "tune-ease-trials"]
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys))
        )
    by_key = {a.key: a for a in artifacts}
    assert set(by_key) == set(keys)
    assert str(by_key["tune-ease-plot"].data).startswith("data:image/png;base64,")
    assert "## Trials" in str(by_key["tune-ease"].data)


def test_the_retrain_trains_with_the_latest_tuned_settings_and_says_so(
    flow_home: dict[str, str],
) -> None:
    params = {"embedding_dim": 16, "hidden_dim": 24, "max_len": 10, "learning_rate": 5e-3}
    older = {**params, "embedding_dim": 8}
    for chosen in (older, params):  # the latest wins
        tuned.record(
            engine(),
            TunedSettings(
                "gru4rec", "loo", "f" * 64, "gru4rec-loo-f", chosen, "ndcg@10", 0.1, 3, 5, 1, 2.0
            ),
        )
    latest = tuned.latest(engine(), "gru4rec")
    assert latest is not None
    result = retrain_flow(models=["pop", "gru4rec"], budget_seconds=20)
    rows = {row["model"]: row for row in result["candidates"]}
    assert rows["gru4rec"]["settings"] == f"tuned #{latest.id}"
    assert rows["pop"]["settings"] == "defaults"
    record = registry.get_version(engine(), rows["gru4rec"]["version"])
    assert record.params is not None
    assert {k: record.params[k] for k in ("embedding_dim", "hidden_dim", "max_len")} == {
        "embedding_dim": 16,
        "hidden_dim": 24,
        "max_len": 10,
    }
    report = Path(result["report_path"]).read_text()
    assert "## Settings (recsys tune)" in report
    assert "- pop: defaults (never tuned)" in report
    assert "- gru4rec: tuned" in report and "study `gru4rec-loo-f`" in report
