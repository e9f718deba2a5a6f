"""Data-parallel training: two processes (gloo) train one model as well as one process does."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from recsys import registry
from recsys.cli import app
from recsys.data.splits import Split
from recsys.db.engine import create_engine
from recsys.db.migrate import upgrade
from recsys.distributed import shard, train_parallel
from recsys.errors import RecsysError
from recsys.evaluation import compare, evaluate
from recsys.models import build_model
from recsys.models.base import torch_scorer
from recsys.models.gru4rec import GRU4RecConfig
from recsys.training import TrainConfig, train

CONFIG = TrainConfig(
    learning_rate=3e-3, batch_size=32, max_epochs=12, patience=3, threads=2, progress=False
)


def test_shard_gives_each_rank_one_batch_per_round_and_as_many() -> None:
    batches = list(range(11))
    parts = [list(shard(iter(batches), rank, 3)) for rank in range(3)]
    assert parts == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]  # 9 and 10: an incomplete last round
    assert list(shard(iter(batches), 0, 1)) == batches


def _valid(model: object, data: Split) -> object:
    # As recsys.training.validate scores the validation targets.
    return evaluate(
        torch_scorer(model),  # type: ignore[arg-type]
        data.valid,
        num_items=data.num_items,
        protocol=data.protocol,
        ks=(10,),
        max_len=30,
    )


@pytest.mark.slow
def test_two_processes_reach_the_validation_score_of_one(small_split: Split) -> None:
    build = partial(
        build_model, "gru4rec", small_split.num_users, small_split.num_items,
        config=GRU4RecConfig(max_len=30),
    )  # fmt: skip
    one = build()
    single = train(one, small_split, CONFIG)
    state, parallel = train_parallel(train, build, small_split, CONFIG, nproc=2)
    two = build()
    two.load_state_dict(state)
    two.eval()
    # Each process saw half of every epoch's batches; the model learned as much.
    assert parallel.epochs_run >= 2 and parallel.best_valid > 0
    a, b = _valid(one, small_split), _valid(two, small_split)
    diff = compare(a, b, "ndcg@10")  # type: ignore[arg-type]
    print(f"one process {diff['mean_a']:.4f}, two {diff['mean_b']:.4f}", diff)
    assert diff["ci_low"] <= 0.0 <= diff["ci_high"], diff
    assert abs(parallel.best_valid - float(b.mean("ndcg@10"))) < 1e-6  # type: ignore[attr-defined]
    assert single.best_valid > 0


def test_nproc_must_be_sensible(small_split: Split) -> None:
    build = partial(build_model, "gru4rec", small_split.num_users, small_split.num_items)
    with pytest.raises(RecsysError, match="nproc must be between 1 and 64"):
        train_parallel(train, build, small_split, CONFIG, nproc=0)


@pytest.mark.slow
def test_cli_train_with_two_processes_registers_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'recsys.db'}"
    upgrade(create_engine(url))
    recsys_env = {"RECSYS_HOME": str(tmp_path / "home"), "RECSYS_DATABASE_URL": url}
    for key, value in recsys_env.items():
        monkeypatch.setenv(key, value)
    runner = CliRunner()
    generated = runner.invoke(
        app, ["generate", "synthetic", "--users", "120", "--items", "60", "--interactions", "2400"]
    )
    assert generated.exit_code == 0, generated.output
    result = runner.invoke(
        app,
        ["train", "--model", "gru4rec", "--nproc", "2", "--epochs", "3",
         "--set", "max_len=20", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    engine = create_engine(recsys_env["RECSYS_DATABASE_URL"])
    versions = registry.list_versions(engine)
    assert [v.version for v in versions] == [1] and versions[0].status == "ready"
    artifacts = list(Path(recsys_env["RECSYS_HOME"]).rglob("model.onnx"))
    assert len(artifacts) == 1
    assert np.isfinite(versions[0].metrics["ndcg@10"]["value"])  # type: ignore[index]
