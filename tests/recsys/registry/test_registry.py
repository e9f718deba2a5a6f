"""The registry on SQLite and PostgreSQL: lineage, the promotion gate, aliases, integrity."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from sqlalchemy import Engine
from torch import Tensor

from recsys import registry
from recsys.ann import ItemIndex
from recsys.artifacts import ONNX_FILE, ArtifactIntegrityError, sha256_file
from recsys.data.ingest import ingest
from recsys.data.synthetic import SyntheticConfig, generate
from recsys.db.engine import create_engine
from recsys.experiment import Outcome, train_and_evaluate
from recsys.models.base import InputKind, Query
from recsys.models.pop import Pop, PopConfig
from recsys.registry import housekeeping, promotion, registration

ROOT = Path(__file__).resolve().parents[3]
FAST = {"threads": 1, "progress": False}


def populate(engine: Engine, tmp_path: Path, seed: int = 4, num_items: int = 80) -> None:
    batch = generate(
        SyntheticConfig(num_users=180, num_items=num_items, num_interactions=5000, seed=seed)
    )
    ingest(engine, batch, tmp_path / "rejects")


def trained(url: str, name: str) -> Outcome:
    return train_and_evaluate(
        create_engine(url), name, "loo", train_overrides={"max_epochs": 2, **FAST}
    )


def gate(
    engine: Engine, version: int, outcome: Outcome, **kwargs: object
) -> promotion.GateDecision:
    return promotion.gate(
        engine,
        version,
        outcome.test,
        outcome.split,
        outcome.snapshot.users,
        outcome.snapshot.items,
        actor=registry.actor("test gate"),
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def arts(tmp_path: Path) -> Path:
    return tmp_path / "artifacts"


def test_register_records_lineage_metrics_and_artifact(
    engine: Engine, database_url: str, tmp_path: Path, arts: Path
) -> None:
    populate(engine, tmp_path)
    outcome = trained(database_url, "ease")
    record = registration.register(engine, outcome, artifacts_dir=arts, flow_run_id="run-42")

    assert record.status == "ready" and record.family == "ease"
    assert record.params is not None and record.params["l2"] > 0  # the fitted choice
    assert record.protocol == "loo" and record.evaluated_users == outcome.test.num_users
    ndcg = record.metrics["ndcg@10"] if record.metrics else {}
    assert ndcg["ci_low"] <= ndcg["value"] <= ndcg["ci_high"]
    assert record.snapshot is not None
    assert record.snapshot["digest"] == outcome.snapshot.descriptor.digest == record.snapshot_digest
    assert record.snapshot["num_interactions"] == 5000
    assert record.eval_digest == outcome.test.eval_digest
    assert record.flow_run_id == "run-42" and record.code_version
    assert record.opset == 17 and record.parity and record.parity["passed"]
    folder = Path(record.artifact_path or "")
    assert folder.parent == arts / "models" and folder.is_dir()
    assert sha256_file(folder / ONNX_FILE) == record.onnx_sha256
    assert [r.version for r in registry.list_versions(engine)] == [record.version]
    assert registry.servable_versions(engine) == [record.version]


def test_gate_first_champion_must_beat_popularity_and_later_ones_the_champion(
    engine: Engine, database_url: str, tmp_path: Path, arts: Path
) -> None:
    populate(engine, tmp_path)
    pop = trained(database_url, "pop")
    v_pop = registration.register(engine, pop, artifacts_dir=arts).version
    first = gate(engine, v_pop, pop)
    assert not first.promoted and "popularity" in first.reason
    assert registry.alias_version(engine) is None

    ease = trained(database_url, "ease")
    v_ease = registration.register(engine, ease, artifacts_dir=arts).version
    decision = gate(engine, v_ease, ease)
    assert decision.promoted, decision.reason
    assert decision.baseline == "popularity" and decision.ci_low is not None
    assert decision.ci_low > 0 and decision.num_users == ease.test.num_users
    assert registry.alias_version(engine) == v_ease

    again = gate(engine, v_pop, pop)  # now against the champion, re-scored through ONNX
    assert not again.promoted and again.baseline == f"champion v{v_ease}"
    assert again.baseline_value == pytest.approx(ease.test.mean("ndcg@10"), abs=1e-6)
    assert again.diff is not None and again.diff < 0
    assert registry.alias_version(engine) == v_ease

    stored = registry.get_version(engine, v_pop).gate
    assert stored is not None and stored["promoted"] is False and stored["diff"] < 0
    (move,) = registry.alias_history(engine, registry.CHAMPION)
    assert (move.from_version, move.to_version, move.action) == (None, v_ease, "promote")
    assert "test gate" in move.actor and "promotion gate" in move.reason
    assert move.details is not None and move.details["p_value"] < 0.05


def test_gate_margin_holds_back_a_better_candidate(
    engine: Engine, database_url: str, tmp_path: Path, arts: Path
) -> None:
    populate(engine, tmp_path)
    ease = trained(database_url, "ease")
    version = registration.register(engine, ease, artifacts_dir=arts).version
    decision = gate(engine, version, ease, margin=0.5)
    assert not decision.promoted and decision.diff is not None and decision.diff > 0
    assert "does not beat the margin 0.5" in decision.reason
    assert registry.alias_version(engine) is None


def test_gate_rescores_the_champion_on_new_data_with_new_items(
    engine: Engine, database_url: str, tmp_path: Path, arts: Path
) -> None:
    populate(engine, tmp_path, num_items=60)
    old = trained(database_url, "ease")
    v_old = registration.register(engine, old, artifacts_dir=arts).version
    registry.promote(engine, v_old, actor="test", reason="setup")

    populate(engine, tmp_path, seed=9, num_items=90)  # more events, 30 items the champion lacks
    new = trained(database_url, "ease")
    assert new.split.num_items > old.split.num_items
    v_new = registration.register(engine, new, artifacts_dir=arts).version
    decision = gate(engine, v_new, new)
    assert decision.num_users == new.test.num_users

    champion_now = promotion.evaluate_artifact(
        registry.load_artifact(engine, v_old), new.split, new.snapshot.users, new.snapshot.items
    )
    assert decision.baseline_value == pytest.approx(champion_now.mean("ndcg@10"))
    unknown = set(new.snapshot.items.to_list()) - set(old.snapshot.items.to_list())
    targets = new.split.test.targets.values
    new_target = np.isin(
        [new.snapshot.items.ids[t] for t in targets], sorted(unknown)
    )  # users whose test item the champion never saw can only miss
    assert new_target.any()
    assert (champion_now.per_user["hr@20"][new_target] == 0).all()


def test_promote_and_rollback_walk_the_champion_history(
    engine: Engine, database_url: str, tmp_path: Path, arts: Path
) -> None:
    populate(engine, tmp_path)
    outcome = trained(database_url, "ease")
    v1, v2, v3 = (
        registration.register(engine, outcome, artifacts_dir=arts).version for _ in range(3)
    )
    for version in (v1, v2, v3):
        registry.promote(engine, version, actor="tester", reason=f"ship v{version}")
    with pytest.raises(registry.RegistryError, match="already champion"):
        registry.promote(engine, v3, actor="tester", reason="again")

    back = registry.rollback(engine, actor="tester", reason="v3 misbehaves")
    assert (back.from_version, back.to_version, back.action) == (v3, v2, "rollback")
    assert registry.rollback(engine, actor="tester", reason="v2 too").to_version == v1
    with pytest.raises(registry.RegistryError, match="no earlier version"):
        registry.rollback(engine, actor="tester", reason="nothing left")
    assert registry.alias_version(engine) == v1

    moves = registry.alias_history(engine, registry.CHAMPION)
    assert [(m.from_version, m.to_version) for m in moves] == [
        (None, v1),
        (v1, v2),
        (v2, v3),
        (v3, v2),
        (v2, v1),
    ]
    assert moves[3].reason == "v3 misbehaves" and moves[3].actor == "tester"
    # A stale expectation loses: the alias moved since it was read.
    with pytest.raises(registry.RegistryError, match="moved while"):
        registry.move_alias(
            engine, "champion", v3, expected=v2, action="promote", actor="x", reason="stale"
        )


class BatchTwoOnly(Pop):
    """Scores fine in torch, but its traced graph bakes in the example's batch size."""

    input_kinds: ClassVar[tuple[InputKind, ...]] = ("history",)

    def score(self, query: Query) -> Tensor:
        assert query.history is not None
        rows = int(query.history.shape[0])  # a Python int: tracing freezes it
        return self.counts.expand(rows, -1) + torch.zeros(rows, 1) * query.history.sum()


def test_a_version_failing_parity_is_registered_unservable_and_never_served(
    engine: Engine, database_url: str, tmp_path: Path, arts: Path
) -> None:
    populate(engine, tmp_path)
    outcome = trained(database_url, "pop")
    broken = BatchTwoOnly(PopConfig(), outcome.split.num_users, outcome.split.num_items)
    broken.fit(outcome.split.train)
    outcome.model = broken
    record = registration.register(engine, outcome, artifacts_dir=arts)

    assert record.status == "unservable"
    assert record.parity is not None and record.parity["passed"] is False
    assert record.error is not None and "parity" in record.error
    assert "ONNX returned shape (2, " in record.error  # the traced batch size, not 37
    decision = gate(engine, record.version, outcome)
    assert not decision.promoted and "not servable" in decision.reason
    with pytest.raises(registry.RegistryError, match="unservable"):
        registry.promote(engine, record.version, actor="x", reason="try")
    with pytest.raises(registry.RegistryError, match="unservable"):
        registry.load_artifact(engine, record.version)


@pytest.mark.slow
def test_a_large_catalogue_gets_an_item_index_whose_recall_is_recorded(
    engine: Engine, database_url: str, tmp_path: Path, arts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSYS_ANN_MIN_ITEMS", "1")  # every catalogue counts as large
    populate(engine, tmp_path)
    outcome = trained(database_url, "sasrec")
    record = registration.register(engine, outcome, artifacts_dir=arts)

    assert record.status == "ready" and record.error is None
    assert record.parity is not None and record.parity["passed"]
    check = record.parity["retrieval"]
    assert check["passed"] and check["recall_at_10"] >= 0.95 and check["min_recall"] == 0.95
    assert check["users"] > 0 and check["max_abs_diff"] <= check["atol"]
    assert check["index"]["library"] == "faiss"
    artifact = registry.load_artifact(engine, record.version)
    assert artifact.retrieval == check["index"]
    index = Path(record.artifact_path or "") / "items.index"
    index.write_bytes(index.read_bytes()[:-8])
    with pytest.raises(ArtifactIntegrityError, match=r"items\.index does not match"):
        registry.load_artifact(engine, record.version)


@pytest.mark.slow
def test_an_item_index_below_the_recall_floor_makes_the_version_unservable(
    engine: Engine, database_url: str, tmp_path: Path, arts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSYS_ANN_MIN_ITEMS", "1")
    build = ItemIndex.build.__func__  # type: ignore[attr-defined]

    def corrupted(cls: type[ItemIndex], vectors: np.ndarray, *args: Any, **kw: Any) -> ItemIndex:
        """A real index whose rows point at the wrong items: searching more cells cannot
        repair it, so it fails the check whatever the registration tries."""
        order = np.random.default_rng(0).permutation(len(vectors))
        return build(cls, np.ascontiguousarray(vectors[order]), *args, **kw)  # type: ignore[no-any-return]

    monkeypatch.setattr(ItemIndex, "build", classmethod(corrupted))
    populate(engine, tmp_path)
    outcome = trained(database_url, "sasrec")
    record = registration.register(engine, outcome, artifacts_dir=arts)

    assert record.status == "unservable"
    assert record.parity is not None and record.parity["passed"]  # the graph itself is fine
    check = record.parity["retrieval"]
    assert not check["passed"] and check["recall_at_10"] < 0.95
    assert record.error is not None and "item index" in record.error
    assert f"recall@10 = {check['recall_at_10']:.3f}" in record.error
    assert "RECSYS_ANN_MIN_ITEMS" in record.error  # how to serve it anyway: every item scored
    with pytest.raises(registry.RegistryError, match="unservable"):
        registry.promote(engine, record.version, actor="x", reason="try")
    with pytest.raises(registry.RegistryError, match="recall@10"):
        registry.load_artifact(engine, record.version)


def test_a_registration_that_raises_leaves_no_version_and_no_folder(
    engine: Engine,
    database_url: str,
    tmp_path: Path,
    arts: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    populate(engine, tmp_path)
    outcome = trained(database_url, "ease")

    def lost_connection(*args: object, **kwargs: object) -> None:
        raise ConnectionError("database went away before the commit")

    monkeypatch.setattr(registration, "_finalize", lost_connection)
    with pytest.raises(ConnectionError):
        registration.register(engine, outcome, artifacts_dir=arts)
    assert registry.list_versions(engine) == [] and registry.servable_versions(engine) == []
    (hidden,) = registry.list_versions(engine, include_hidden=True)
    assert hidden.status == "failed" and "went away" in (hidden.error or "")
    assert list((arts / "models").iterdir()) == []
    with pytest.raises(registry.RegistryError, match="no registered model version"):
        registry.get_version(engine, hidden.version)


CRASH = """
import os, sys
from pathlib import Path
from recsys.registry import registration
from recsys.db.engine import create_engine
from recsys.experiment import train_and_evaluate

url, arts = sys.argv[1], Path(sys.argv[2])
overrides = {"threads": 1, "progress": False}
outcome = train_and_evaluate(create_engine(url), "ease", "loo", train_overrides=overrides)
registration._finalize = lambda *args, **kwargs: os._exit(9)  # the process dies before the commit
registration.register(create_engine(url), outcome, artifacts_dir=arts)
"""


@pytest.mark.slow
def test_a_crash_before_the_commit_leaves_an_invisible_pending_row_that_sweep_clears(
    engine: Engine, database_url: str, tmp_path: Path, arts: Path
) -> None:
    populate(engine, tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", CRASH, database_url, str(arts)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 9, done.stderr
    assert registry.list_versions(engine) == []
    (pending,) = registry.list_versions(engine, include_hidden=True)
    assert pending.status == "pending"
    assert len(list((arts / "models").iterdir())) == 1  # the complete but unregistered folder

    assert housekeeping.sweep(engine, arts, older_than=timedelta(hours=1)) == {
        "abandoned_versions": 0,
        "removed_partial_folders": 0,
        "left_pending_versions": [pending.version],
        "left_partial_folders": 0,
    }  # too recent: it could be a registration still running, and the result says it left it
    assert housekeeping.sweep(engine, arts, older_than=timedelta(0))["abandoned_versions"] == 1
    assert registry.get_version(engine, pending.version, include_hidden=True).status == "abandoned"
    assert list((arts / "models").iterdir()) == []


REGISTER_THREE = """
import sys
from pathlib import Path
from recsys.registry import registration
from recsys.db.engine import create_engine
from recsys.experiment import train_and_evaluate

url, arts, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
overrides = {"threads": 1, "progress": False}
outcome = train_and_evaluate(create_engine(url), "ease", "loo", train_overrides=overrides)
engine = create_engine(url)
while not go.exists():
    pass
print(*(registration.register(engine, outcome, artifacts_dir=arts).version for _ in range(3)))
"""


@pytest.mark.slow
def test_concurrent_registrations_from_two_processes_get_distinct_versions(
    engine: Engine, database_url: str, tmp_path: Path, arts: Path
) -> None:
    populate(engine, tmp_path)
    go = tmp_path / "go"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", REGISTER_THREE, database_url, str(arts), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        for _ in range(2)
    ]
    go.touch()
    versions = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        versions += [int(v) for v in out.split()]
    assert len(versions) == 6 and len(set(versions)) == 6
    records = registry.list_versions(engine)
    assert sorted(r.version for r in records) == sorted(versions)
    assert all(r.status == "ready" for r in records)
    assert len({r.artifact_path for r in records}) == 6


def test_load_artifact_refuses_a_file_changed_after_registration(
    engine: Engine, database_url: str, tmp_path: Path, arts: Path
) -> None:
    populate(engine, tmp_path)
    outcome = trained(database_url, "ease")
    record = registration.register(engine, outcome, artifacts_dir=arts)
    registry.load_artifact(engine, record.version)
    weights = Path(record.artifact_path or "") / "weights.npz"
    weights.write_bytes(weights.read_bytes() + b"\0")
    with pytest.raises(ArtifactIntegrityError, match=r"weights\.npz does not match"):
        registry.load_artifact(engine, record.version)


def test_the_actor_names_the_operator_when_one_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECSYS_OPERATOR", raising=False)
    assert registry.actor("recsys models promote").startswith("recsys models promote (")
    assert "@" in registry.actor("x")
    monkeypatch.setenv("RECSYS_OPERATOR", "ml-oncall")
    assert registry.actor("recsys models promote") == "recsys models promote (ml-oncall)"
