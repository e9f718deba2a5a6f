"""ONNX export of every model: checker, metadata, parity on real batches, a loadable artifact."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest

from recsys.artifacts import (
    ARTIFACT_FILES,
    ONNX_FILE,
    Artifact,
    ArtifactIntegrityError,
)
from recsys.data.extract import extract
from recsys.data.ingest import ingest
from recsys.data.splits import split
from recsys.data.synthetic import SyntheticConfig, generate
from recsys.db.engine import create_engine
from recsys.db.migrate import upgrade
from recsys.experiment import Outcome, train_and_evaluate
from recsys.export import (
    EXAMPLE_BATCH,
    PARITY_ATOL,
    load_model,
    onnx_metadata,
    parity_batches,
    write_artifact,
)
from recsys.models import MODELS
from recsys.models.base import torch_scorer
from recsys.ranking import recommend


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A small synthetic database every model trains on for one or two epochs."""
    folder = tmp_path_factory.mktemp("export")
    url = f"sqlite:///{folder / 'recsys.db'}"
    upgrade(create_engine(url))
    engine = create_engine(url)
    batch = generate(SyntheticConfig(num_users=160, num_items=70, num_interactions=4000, seed=11))
    ingest(engine, batch, folder / "rejects")
    engine.dispose()
    yield url


@pytest.fixture(scope="module")
def outcomes(world: str) -> dict[str, Outcome]:
    snapshot = extract(create_engine(world))
    data = split(snapshot, "loo")
    return {
        name: train_and_evaluate(
            create_engine(world),
            name,
            "loo",
            snapshot=snapshot,
            data=data,
            train_overrides={"max_epochs": 2, "threads": 1, "progress": False},
        )
        for name in MODELS
    }


@pytest.mark.parametrize("name", sorted(MODELS))
def test_export_every_model_passes_checker_and_parity_on_real_batches(
    name: str, outcomes: dict[str, Outcome], tmp_path: Path
) -> None:
    outcome = outcomes[name]
    folder = tmp_path / "v7"
    exported = write_artifact(outcome, folder, version=7, code_version="test")

    parity = exported.parity
    assert parity.passed, parity.reason
    assert parity.max_abs_diff is not None and parity.max_abs_diff <= PARITY_ATOL
    assert parity.top10_agreement == 1.0
    assert all(shape[0] != EXAMPLE_BATCH for shape in parity.batches)
    onnx.checker.check_model(str(folder / ONNX_FILE), full_check=True)

    meta = onnx_metadata(folder / ONNX_FILE)
    assert meta["family"] == name and meta["version"] == "7"
    assert meta["input_kinds"] == ",".join(outcome.model.input_kinds)
    assert int(meta["num_items"]) == outcome.split.num_items
    assert int(meta["max_len"]) >= 1
    assert meta["item_map_digest"] == outcome.snapshot.items.digest()

    graph = onnx.load(str(folder / ONNX_FILE))
    inputs = {i.name: i for i in graph.graph.input}
    assert list(inputs) == list(outcome.model.input_kinds)
    batch_dim = inputs[outcome.model.input_kinds[0]].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param, "the batch dimension must be dynamic"
    if "history" in inputs:
        assert inputs["history"].type.tensor_type.shape.dim[1].dim_param, "length is dynamic"


@pytest.mark.parametrize("name", ["sasrec", "mlp", "ease", "neumf"])
def test_artifact_reloads_without_unpickling_and_scores_like_torch(
    name: str, outcomes: dict[str, Outcome], tmp_path: Path
) -> None:
    outcome = outcomes[name]
    folder = tmp_path / "artifact"
    write_artifact(outcome, folder, version=3, code_version="test")
    assert sorted(p.name for p in folder.iterdir()) == sorted([*ARTIFACT_FILES, "manifest.json"])
    for path in folder.glob("*.json"):
        json.loads(path.read_text())  # plain JSON
    with np.load(folder / "weights.npz", allow_pickle=False) as weights:
        assert set(weights.files) == set(outcome.model.state_dict())

    vectors = np.load(folder / "item_vectors.npy", allow_pickle=False)
    assert vectors.shape[0] == outcome.split.num_items and vectors.shape[1] > 0
    assert Artifact.load(folder).unit_vectors is not None

    rebuilt = load_model(folder)
    batch = parity_batches(outcome.model, outcome.split.test, sizes=(9,))[0]
    users = batch.get("user", np.zeros(9, dtype=np.int64))
    history = batch.get("history", np.zeros((9, 1), dtype=np.int64))
    expected = torch_scorer(outcome.model)(history, users)
    np.testing.assert_array_equal(torch_scorer(rebuilt)(history, users), expected)

    artifact = Artifact.load(folder)
    assert artifact.family == name and artifact.version == 3
    np.testing.assert_allclose(artifact.score(history, users), expected, atol=PARITY_ATOL)


def test_artifact_with_a_changed_file_is_refused_at_load(
    outcomes: dict[str, Outcome], tmp_path: Path
) -> None:
    folder = tmp_path / "artifact"
    exported = write_artifact(outcomes["sasrec"], folder, version=1, code_version="test")
    Artifact.load(folder, onnx_sha256=exported.onnx_sha256)

    onnx_bytes = bytearray((folder / ONNX_FILE).read_bytes())
    onnx_bytes[-1] ^= 0xFF
    (folder / ONNX_FILE).write_bytes(bytes(onnx_bytes))
    with pytest.raises(ArtifactIntegrityError, match=r"model.onnx does not match its recorded"):
        Artifact.load(folder)
    with pytest.raises(ArtifactIntegrityError, match="registry's ONNX sha256"):
        Artifact.load(folder, onnx_sha256="0" * 64)


def test_recommend_excludes_history_and_falls_back_to_popularity(
    outcomes: dict[str, Outcome], tmp_path: Path
) -> None:
    folder = tmp_path / "artifact"
    write_artifact(outcomes["sasrec"], folder, version=1, code_version="test")
    artifact = Artifact.load(folder)
    history = artifact.item_ids[:5]
    ranked = recommend(artifact, [*history, "no-such-item"], k=10)
    assert ranked.fallback is None and len(ranked.item_ids) == 10
    assert not set(ranked.item_ids) & set(history)
    assert ranked.unknown_items == ("no-such-item",)
    assert ranked.scores == sorted(ranked.scores, reverse=True)

    cold = recommend(artifact, ["no-such-item"], k=3)
    assert cold.fallback == "popular"
    most_popular = np.argsort(-artifact.popularity, kind="stable")[:3]
    assert cold.item_ids == [artifact.item_ids[j] for j in most_popular]
