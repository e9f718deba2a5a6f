"""Train -> register -> gate (recsys.pipeline) and the retrain's steps (recsys.retrain),
as plain functions on SQLite and PostgreSQL: no Prefect here (tests/flows runs the flow)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Engine

from recsys import registry, retrain
from recsys.data.extract import extract
from recsys.data.ingest import ingest
from recsys.data.synthetic import SyntheticConfig, generate
from recsys.data.validation import Finding, quality_report
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


def test_retrain_steps_fail_skip_conclude_and_report(engine: Engine, tmp_path: Path) -> None:
    populate(engine, tmp_path)
    arts = tmp_path / "artifacts"
    summary = retrain.begin(engine, "run-1")
    assert (summary.status, summary.reason, summary.champion_before) == ("failed", "", None)
    snapshot = extract(engine)
    quality = quality_report(snapshot)

    step = retrain.check_data(engine, summary, snapshot.descriptor, quality)
    assert not step.ends and step.error is None
    assert step.summary.snapshot == snapshot.descriptor.to_dict()
    invalid = replace(quality, findings=[Finding("error", "few", "too few events")])
    failed = retrain.check_data(engine, summary, snapshot.descriptor, invalid)
    assert (
        failed.ends and failed.error == failed.summary.reason == "validation failed: too few events"
    )
    assert failed.summary.status == "failed"

    outcome = train_and_evaluate(engine, "ease", "loo", snapshot=snapshot, train_overrides=FAST)
    actor = retrain.gate_actor("run-1")
    record = register_and_gate(engine, outcome, artifacts_dir=arts, actor=actor, gate=False).record
    exports = retrain.check_exports(engine, step.summary, [outcome], [record])
    assert not exports.ends and [row["version"] for row in exports.summary.candidates] == [
        record.version
    ]
    broken = replace(record, status="unservable", error="ONNX parity failed: drift")
    unservable = retrain.check_exports(engine, step.summary, [outcome], [broken])
    assert unservable.ends and unservable.summary.status == "failed"
    assert unservable.error == (
        f"export failed, nothing promoted: v{record.version} ease: ONNX parity failed: drift"
    )
    assert retrain.choose_candidate([outcome], [broken]) is None
    assert retrain.choose_candidate([outcome], [record]) == 0

    from recsys.pipeline import gate_candidate

    decision = gate_candidate(engine, record.version, outcome, actor=actor)
    final = retrain.conclude(engine, exports.summary, outcome, record, decision)
    assert final.status == "promoted" and final.champion_after == record.version
    assert final.reason == f"v{record.version} (ease) is the new champion"
    assert final.gate == decision.to_dict()

    unchanged = retrain.check_data(
        engine, retrain.begin(engine, None), snapshot.descriptor, quality
    )
    assert unchanged.ends and unchanged.error is None and unchanged.summary.status == "skipped"
    assert unchanged.summary.reason.startswith(f"no new data since champion v{record.version}")
    assert unchanged.summary.champion_after == unchanged.summary.champion_before == record.version
    forced = retrain.begin(engine, None)
    assert not retrain.check_data(engine, forced, snapshot.descriptor, quality, force=True).ends

    reported, report = retrain.write_report(final, quality, decision, home=tmp_path / "home")
    path = tmp_path / "home" / "reports" / "retrain-run-1.md"
    assert reported.report_path == str(path) and path.read_text() == report
    assert (Path(record.artifact_path or "") / retrain.REPORT_FILE).read_text() == report
    assert "# Retrain: promoted" in report and "## Gate decision" in report
    data = json.loads(path.with_suffix(".json").read_text())
    assert data["summary"]["status"] == "promoted" and data["summary"]["report_path"] == str(path)
    assert data["quality"]["interactions"] == quality.interactions and data["quality"]["ok"]
    assert set(reported.to_dict()) == {
        "status",
        "reason",
        "snapshot",
        "champion_before",
        "champion_after",
        "candidates",
        "gate",
        "flow_run_id",
        "report_path",
        "bento",
        "service_reload",
        "online",
        "settings",
        "refit",
    }
    # Which settings each candidate trained with, in the report.
    found = {"ease": None}
    said = retrain.with_settings(reported, found)  # type: ignore[arg-type]
    assert said.settings == {"ease": "defaults (never tuned)"}
    assert "## Settings (recsys tune)\n\n- ease: defaults (never tuned)" in (
        retrain.render_report(said, None, None)
    )
    local = retrain.report_path(tmp_path, None)
    assert local == tmp_path / "reports" / "retrain-local.md"


def test_model_names_default_and_refuse_unknown_families() -> None:
    assert retrain.model_names(None) == list(retrain.DEFAULT_MODELS)
    assert retrain.model_names(["ease"]) == ["ease"]
    with pytest.raises(RecsysError, match="unknown model 'nope'"):
        retrain.model_names(["ease", "nope"])
    assert retrain.train_threads(3) >= 1


def test_a_refit_repeats_the_measured_run_on_every_event(engine: Engine, tmp_path: Path) -> None:
    from recsys.experiment import refit
    from recsys.registry.promotion import measured_as

    populate(engine, tmp_path)
    arts = tmp_path / "artifacts"
    overrides = {**FAST, "max_epochs": 4, "patience": 100}
    measured = train_and_evaluate(engine, "gru4rec", "loo", train_overrides=overrides)
    gated = register_and_gate(engine, measured, artifacts_dir=arts, actor="test", gate=False)
    registry.move_alias(
        engine,
        registry.CHAMPION,
        gated.record.version,
        expected=None,
        action="promote",
        actor="test",
        reason="by hand",
    )

    again = refit(engine, measured, gated.record.version)
    assert again.refit_of == gated.record.version and again.to_dict()["refit_of"] is not None
    assert again.training.epochs_run == measured.training.best_epoch == again.training.best_epoch
    assert len(again.split.train.user_idx) == len(measured.snapshot)  # held-out targets too
    assert len(measured.split.train.user_idx) < len(measured.snapshot)
    assert again.test is measured.test and again.training.best_valid == measured.training.best_valid
    assert again.model is not measured.model

    record = register_and_gate(engine, again, artifacts_dir=arts, actor="test", gate=False).record
    summary = retrain.RetrainSummary("promoted", "v1 is the new champion")
    adopted = retrain.adopt_refit(engine, summary, gated.record, record, actor="test")
    assert adopted.champion_after == record.version == registry.alias_version(engine)
    assert adopted.refit is not None and adopted.refit["of"] == gated.record.version
    assert record.training is not None and record.training["refit_of"] == gated.record.version
    assert measured_as(engine, record.version) == gated.record.version
    assert measured_as(engine, gated.record.version) == gated.record.version
    # Without a servable measured run, the refit stands for itself.
    from sqlalchemy import update

    from recsys.db.schema import model_versions_table

    with engine.begin() as conn:
        conn.execute(
            update(model_versions_table)
            .where(model_versions_table.c.version == gated.record.version)
            .values(status="unservable")
        )
    assert measured_as(engine, record.version) == record.version


def test_a_refit_that_cannot_serve_leaves_the_measured_version_champion(
    engine: Engine, tmp_path: Path
) -> None:
    populate(engine, tmp_path)
    arts = tmp_path / "artifacts"
    ease = train_and_evaluate(engine, "ease", "loo", train_overrides=FAST)
    gated = register_and_gate(engine, ease, artifacts_dir=arts, actor="test")
    broken = replace(gated.record, version=gated.record.version + 1, status="unservable")
    summary = retrain.RetrainSummary("promoted", f"v{gated.record.version} is the new champion")
    kept = retrain.adopt_refit(engine, summary, gated.record, broken, actor="test")
    assert kept.champion_after is None or kept.champion_after == gated.record.version
    assert registry.alias_version(engine) == gated.record.version
    assert kept.refit is not None and "unservable" in kept.refit["error"]
    assert "its refit did not replace it" in kept.reason
