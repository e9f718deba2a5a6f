"""The training loop: seeded determinism, best weights restored, budget and patience stops."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from recsys.data.batches import eval_query_arrays, sequence_batches
from recsys.data.splits import Split
from recsys.errors import RecsysError
from recsys.models import MODELS, build_model
from recsys.models.base import Query, torch_scorer
from recsys.models.sasrec import SASRecConfig
from recsys.training import TrainConfig, train, train_config_with, validate

SMALL = TrainConfig(
    learning_rate=3e-3, batch_size=64, max_epochs=6, patience=100, threads=1, progress=False
)


def _sasrec(data: Split) -> torch.nn.Module:
    torch.manual_seed(123)  # a different init than the run's seed, to show the seed decides
    return build_model(
        "sasrec", data.num_users, data.num_items, config=SASRecConfig(max_len=30, dropout=0.2)
    )


def test_training_same_seed_same_model(small_split: Split) -> None:
    first, second = _sasrec(small_split), _sasrec(small_split)
    a = train(first, small_split, SMALL)
    b = train(second, small_split, SMALL)
    assert [e.loss for e in a.history] == [e.loss for e in b.history]
    for (name, x), (_, y) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert torch.equal(x, y), name


def test_training_restores_the_best_weights(small_split: Split) -> None:
    model = _sasrec(small_split)
    result = train(model, small_split, replace(SMALL, max_epochs=8))
    assert result.best_valid == max(e.valid for e in result.history)
    assert validate(model, small_split) == pytest.approx(result.best_valid)
    assert result.history[0].loss > result.history[-1].loss


def test_training_stops_on_patience_and_budget(small_split: Split) -> None:
    patient = train(_sasrec(small_split), small_split, replace(SMALL, max_epochs=50, patience=1))
    assert patient.stopped in ("patience", "max_epochs")
    assert patient.epochs_run - patient.best_epoch <= 1

    budget = train(_sasrec(small_split), small_split, replace(SMALL, budget_seconds=0.01))
    assert budget.stopped == "budget" and budget.epochs_run == 1


def test_train_config_with_defaults_then_overrides() -> None:
    config = train_config_with({"learning_rate": 0.5, "unknown": 1}, {"batch_size": 7})
    assert (config.learning_rate, config.batch_size) == (0.5, 7)


def test_sequence_batches_hold_every_user_once_grouped_by_length(small_split: Split) -> None:
    lengths = small_split.train.sequences.lengths()
    expected = set(np.flatnonzero(lengths >= 2).tolist())
    for pool, seed in ((8, 0), (1, 1)):
        rows: list[np.ndarray] = []
        for batch in sequence_batches(
            small_split.train, 16, 30, np.random.default_rng(seed), pool=pool
        ):
            history = batch["history"].numpy()
            assert history.shape[1] == 30 and (batch["target"].numpy()[history == 0] == 0).all()
            rows.append((history > 0).sum(axis=1))
        assert sum(len(r) for r in rows) == len(expected)
    # Grouped, a batch spans a narrow range of history lengths; by default (plain), it doesn't.
    grouped = list(sequence_batches(small_split.train, 16, 30, np.random.default_rng(0), pool=8))
    plain = list(sequence_batches(small_split.train, 16, 30, np.random.default_rng(0)))

    def mean_spread(batches: list[dict[str, torch.Tensor]]) -> float:
        used = [(b["history"] > 0).sum(dim=1) for b in batches]
        return float(np.mean([int(u.max() - u.min()) for u in used]))

    assert mean_spread(grouped) < mean_spread(plain) / 2
    with pytest.raises(ValueError, match="pool"):
        next(sequence_batches(small_split.train, 16, 30, np.random.default_rng(0), pool=0))


def test_grouped_batches_weigh_every_position_alike(small_split: Split) -> None:
    """weight x (mean over a batch's positions) = (sum over them) / (mean positions per batch)."""
    grouped = list(sequence_batches(small_split.train, 16, 30, np.random.default_rng(0), pool=8))
    assert all(
        "weight" not in b
        for b in sequence_batches(small_split.train, 16, 30, np.random.default_rng(0))
    )
    positions = np.array([int((b["target"] > 0).sum()) for b in grouped], dtype=np.float64)
    weights = np.array([float(b["weight"]) for b in grouped])
    assert positions.std() > 0  # short and long batches really differ in size
    np.testing.assert_allclose(weights, positions / positions.mean(), rtol=1e-6)
    np.testing.assert_allclose(weights.mean(), 1.0, rtol=1e-6)


def test_length_grouping_is_sasrecs_default_only() -> None:
    assert MODELS["sasrec"].train_defaults["length_pool"] == 8
    for name in ("gru4rec", "caser"):
        assert train_config_with(MODELS[name].train_defaults, {}).length_pool == 1
    with pytest.raises(RecsysError, match="length_pool must be at least 1"):
        train_config_with({}, {"length_pool": 0})


def test_chunked_scoring_of_a_padding_invariant_model_matches_plain_scoring(
    small_split: Split,
) -> None:
    model = _sasrec(small_split).eval()
    assert model.padding_invariant
    history, users = eval_query_arrays(small_split.valid, np.arange(len(small_split.valid)), 30)
    chunked = torch_scorer(model, chunk=16)(history, users)
    with torch.inference_mode():
        plain = model.score(Query(history=torch.from_numpy(history))).numpy()
    np.testing.assert_allclose(chunked, plain, atol=1e-5, rtol=0)
