"""Train -> register -> gate (recsys.pipeline) as plain functions on SQLite and PostgreSQL:
no Prefect here (tests/flows runs the flow)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine

from recsys import registry
from recsys.data.ingest import ingest
from recsys.data.synthetic import SyntheticConfig, generate
from recsys.errors import RecsysError
from recsys.experiment import train_and_evaluate
from recsys.pipeline import register_and_gate

FAST = {"threads": 1, "progress": False}


def populate(engine: Engine, tmp_path: Path) -> None:
    batch = generate(SyntheticConfig(num_users=180, num_items=80, num_interactions=5000, seed=4))
    ingest(engine, batch, tmp_path / "rejects")


def test_register_and_gate_registers_then_gates_when_asked(engine: Engine, tmp_path: Path) -> None:
    populate(engine, tmp_path)
    arts = tmp_path / "artifacts"
    ease = train_and_evaluate(engine, "ease", "loo", train_overrides=FAST)

    alone = register_and_gate(engine, ease, artifacts_dir=arts, actor="test", gate=False)
    assert alone.record.status == "ready" and alone.decision is None and alone.champion is None
    assert registry.get_version(engine, alone.record.version).gate is None

    gated = register_and_gate(
        engine, ease, artifacts_dir=arts, actor=registry.actor("test"), flow_run_id="run-7"
    )
    assert gated.decision is not None and gated.decision.promoted, gated.decision
    assert gated.decision.baseline == "popularity"
    assert gated.champion == gated.record.version and gated.record.flow_run_id == "run-7"
    out = gated.to_dict()
    assert set(out) == {
        "version",
        "status",
        "artifact",
        "onnx_sha256",
        "parity",
        "gate",
        "champion",
    }
    assert out["gate"]["promoted"] is True and out["champion"] == gated.record.version


def test_register_and_gate_checks_the_metric_before_registering(
    engine: Engine, tmp_path: Path
) -> None:
    populate(engine, tmp_path)
    ease = train_and_evaluate(engine, "ease", "loo", train_overrides=FAST)
    with pytest.raises(RecsysError, match="'nope@3' is not a per-user metric of the loo"):
        register_and_gate(
            engine, ease, artifacts_dir=tmp_path / "artifacts", actor="test", metric="nope@3"
        )
    assert registry.list_versions(engine, include_hidden=True) == []
