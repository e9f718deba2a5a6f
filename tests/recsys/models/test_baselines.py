"""Behaviour of the baselines: Pop, EASE, Mult-VAE and NeuMF."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import Tensor, nn

import recsys.models.ease as ease_module
from recsys.data.batches import pair_batches, row_batches
from recsys.data.splits import Ragged, TrainSet
from recsys.export import export_onnx
from recsys.models.base import Query, Recommender
from recsys.models.ease import EASE, EASEConfig
from recsys.models.multvae import MultVAE, MultVAEConfig
from recsys.models.neumf import NeuMF, NeuMFConfig
from recsys.models.pop import Pop, PopConfig

NUM_USERS = 40
NUM_ITEMS = 24


def train_set(pairs: list[tuple[int, int]], num_users: int) -> TrainSet:
    """A TrainSet of (user, item) events, in the given order within each user."""
    ordered = sorted(pairs, key=lambda p: p[0])  # stable: keeps each user's order
    users = np.array([u for u, _ in ordered], dtype=np.int32)
    items = np.array([i for _, i in ordered], dtype=np.int32)
    times = np.arange(len(ordered), dtype=np.int64)
    return TrainSet(users, items, times, Ragged.from_groups(users, items, num_users + 1))


def block_world(seed: int = 0) -> TrainSet:
    """Two user groups, each interacting with 6 random items of its own half of the items."""
    rng = np.random.default_rng(seed)
    half = NUM_ITEMS // 2
    pairs = []
    for user in range(1, NUM_USERS + 1):
        offset = 0 if user <= NUM_USERS // 2 else half
        for item in rng.choice(half, size=6, replace=False):
            pairs.append((user, int(item) + offset + 1))
    return train_set(pairs, NUM_USERS)


BUILDERS: dict[str, Callable[[], Recommender]] = {
    "pop": lambda: Pop(PopConfig(), NUM_USERS, NUM_ITEMS),
    "ease": lambda: EASE(EASEConfig(l2=10.0), NUM_USERS, NUM_ITEMS),
    "multvae": lambda: MultVAE(
        MultVAEConfig(hidden_dim=32, latent_dim=8, total_anneal_steps=100),
        NUM_USERS,
        NUM_ITEMS,
    ),
    "neumf": lambda: NeuMF(
        NeuMFConfig(gmf_dim=8, mlp_embedding_dim=8, mlp_hidden=(16, 8)), NUM_USERS, NUM_ITEMS
    ),
}


def build(name: str) -> Recommender:
    torch.manual_seed(0)
    return BUILDERS[name]()


def onnx_session(model: Recommender, folder: Path) -> ort.InferenceSession:
    """Export ``model.score`` the way the registry does (recsys.export) and open it."""
    export_onnx(model, folder / "model.onnx", metadata={})
    return ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])


def scores(model: Recommender, query: Query) -> Tensor:
    model.eval()
    with torch.inference_mode():
        return model.score(query)


def test_pop_ranks_the_most_popular_item_first() -> None:
    events = [(1, 3), (2, 3), (3, 3), (1, 5), (2, 5), (3, 1)]
    model = Pop(PopConfig(), num_users=3, num_items=5)
    model.fit(train_set(events, num_users=3))
    history = torch.tensor([[0, 2], [4, 1]])
    out = scores(model, Query(history=history))
    assert out.shape == (2, 5)
    assert out[0].tolist() == [1.0, 0.0, 3.0, 0.0, 2.0]  # column j is item j + 1
    assert torch.equal(out[0], out[1])  # not personalised
    assert torch.argsort(out[0], descending=True)[:3].tolist() == [2, 4, 0]


def test_pop_counts_are_in_the_state_dict() -> None:
    model = Pop(PopConfig(), NUM_USERS, NUM_ITEMS)
    model.fit(block_world())
    clone = Pop(PopConfig(), NUM_USERS, NUM_ITEMS)
    clone.load_state_dict(model.state_dict())
    query = clone.example_query(batch_size=3)
    torch.testing.assert_close(scores(clone, query), scores(model, query), rtol=0, atol=0)
    assert float(clone.counts.sum()) == len(block_world())


def ease_reference(x: np.ndarray, l2: float) -> np.ndarray:
    """Steck (2019), float64: B = I - P diag(1/diag(P)), P = (XᵀX + λI)⁻¹."""
    precision = np.linalg.inv(x.T @ x + l2 * np.eye(x.shape[1]))
    return np.eye(x.shape[1]) - precision / np.diag(precision)


TINY_EVENTS = [(1, 1), (1, 2), (2, 2), (2, 3), (2, 4), (3, 1), (3, 4), (4, 5), (4, 2), (4, 2)]


def tiny_matrix() -> np.ndarray:
    """The binary user-item matrix of TINY_EVENTS (the repeated (4, 2) counts once)."""
    x = np.zeros((4, 5))
    for user, item in TINY_EVENTS:
        x[user - 1, item - 1] = 1.0
    return x


@pytest.mark.parametrize("l2", [0.5, 3.0])
def test_ease_matches_the_closed_form_with_a_zero_diagonal(l2: float) -> None:
    model = EASE(EASEConfig(l2=l2), num_users=4, num_items=5)
    model.fit(train_set(TINY_EVENTS, num_users=4))
    expected = ease_reference(tiny_matrix(), l2)
    weights = model.weights.numpy()
    np.testing.assert_allclose(weights[1:], expected, atol=1e-5)
    assert np.all(weights[0] == 0)  # the padding row adds nothing
    assert np.all(np.diag(weights[1:]) == 0)

    history = torch.tensor([[0, 0, 1, 2], [3, 4, 4, 5]])  # item 4 twice: counts once
    rows = np.zeros((2, 5))
    rows[0, [0, 1]] = 1
    rows[1, [2, 3, 4]] = 1
    out = scores(model, Query(history=history)).numpy()
    np.testing.assert_allclose(out, rows @ expected, atol=1e-5)


def test_ease_refits_reuse_the_gram_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = ease_module.gram

    def counted(*args: object) -> Tensor:
        calls.append(args)
        return original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(ease_module, "gram", counted)
    ease_module._GRAM_CACHE.clear()
    train = train_set(TINY_EVENTS, num_users=4)
    model = EASE(EASEConfig(), num_users=4, num_items=5)
    for l2 in (0.5, 2.0, 8.0):  # one model re-fitted
        model.set_regularization(l2)
        model.fit(train)
        expected = ease_reference(tiny_matrix(), l2)
        np.testing.assert_allclose(model.weights.numpy()[1:], expected, atol=1e-5)
    assert model.config == EASEConfig(l2=8.0)  # saved with the weights
    other = EASE(EASEConfig(l2=7.0), num_users=4, num_items=5)  # or one model per value
    other.fit(train)
    np.testing.assert_allclose(
        other.weights.numpy()[1:], ease_reference(tiny_matrix(), 7.0), atol=1e-5
    )
    assert len(calls) == 1
    EASE(EASEConfig(), num_users=4, num_items=5).fit(train_set(TINY_EVENTS, num_users=4))
    assert len(calls) == 2  # another training set: computed afresh


def test_ease_without_an_l2_fits_with_the_mean_item_degree() -> None:
    model = EASE(EASEConfig(), num_users=4, num_items=5)
    model.fit(train_set(TINY_EVENTS, num_users=4))
    degree = tiny_matrix().sum(axis=0).mean()  # 9 distinct pairs over 5 items
    assert model.config.l2 == pytest.approx(degree)
    np.testing.assert_allclose(
        model.weights.numpy()[1:], ease_reference(tiny_matrix(), degree), atol=1e-5
    )
    assert ease_module.start_l2(torch.from_numpy(tiny_matrix().T @ tiny_matrix())) == degree


@pytest.mark.parametrize("optimum", [0.3, 37.0, 2500.0, 1e4])
def test_log_search_brackets_the_optimum_strictly_inside(optimum: float) -> None:
    tried: list[float] = []

    def measure(l2: float) -> float:  # unimodal in log λ, peaked at ``optimum``
        tried.append(l2)
        return -((np.log10(l2) - np.log10(optimum)) ** 2)

    chosen = ease_module.log_search(measure, 20.0, 0.1, 1e5)
    assert abs(np.log10(chosen) - np.log10(optimum)) <= 0.1
    assert min(tried) < chosen < max(tried)  # a worse neighbour on each side
    assert len(tried) == len(set(tried)) <= 14  # each value once, few of them


def test_log_search_stops_at_a_bound() -> None:
    chosen = ease_module.log_search(lambda l2: -l2, 50.0, 2.0, 1e3)  # best: as low as allowed
    assert chosen == pytest.approx(2.0)


def test_ease_search_fits_every_value_and_keeps_the_best() -> None:
    train = block_world()
    x = np.zeros((NUM_USERS + 1, NUM_ITEMS))
    x[train.user_idx, train.item_idx - 1] = 1
    model = EASE(EASEConfig(l2_min=0.5, l2_max=500.0), NUM_USERS, NUM_ITEMS)
    fitted: list[np.ndarray] = []

    def validate() -> float:  # a stand-in score that peaks at λ = 20, read off the weights
        fitted.append(model.weights.numpy()[1:].copy())
        assert model.config.l2 is not None
        return -abs(float(np.log10(model.config.l2)) - np.log10(20.0))

    trials = model.search(train, validate)
    assert len(trials) == len(fitted) >= 3
    for trial, weights in zip(trials, fitted, strict=True):  # each value an exact fit
        np.testing.assert_allclose(weights, ease_reference(x, trial.l2), rtol=1e-3, atol=1e-4)
    best = max(trials, key=lambda t: t.valid)
    assert model.config.l2 == best.l2 and abs(np.log10(best.l2 / 20.0)) <= 0.5
    assert min(t.l2 for t in trials) < best.l2 < max(t.l2 for t in trials)
    np.testing.assert_allclose(
        model.weights.numpy()[1:], ease_reference(x, best.l2), rtol=1e-3, atol=1e-4
    )


def test_ease_gram_in_column_blocks_equals_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ease_module, "_GRAM_CHUNK", 7)  # several blocks, a ragged last one
    train = block_world()
    gram = ease_module.gram(train, NUM_USERS, NUM_ITEMS).numpy()
    x = np.zeros((NUM_USERS + 1, NUM_ITEMS))
    x[train.user_idx, train.item_idx - 1] = 1
    np.testing.assert_array_equal(gram, x.T @ x)


def test_ease_gram_weighs_each_pair_by_the_recency_of_its_newest_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ease_module, "_GRAM_CHUNK", 7)
    base = block_world()
    rng = np.random.default_rng(3)
    times = rng.integers(0, 10_000, len(base.user_idx)).astype(np.int64)
    # A repeated pair: its newest event decides its weight.
    users = np.append(base.user_idx, base.user_idx[0]).astype(np.int32)
    items = np.append(base.item_idx, base.item_idx[0]).astype(np.int32)
    times = np.append(times, 10_000)
    train = TrainSet(users, items, times, Ragged.from_groups(users, items, NUM_USERS + 1))
    half_life = 2_500.0
    gram = ease_module.gram(train, NUM_USERS, NUM_ITEMS, half_life).numpy()
    x = np.zeros((NUM_USERS + 1, NUM_ITEMS))
    for u, i, t in zip(users, items, times, strict=True):
        x[u, i - 1] = max(x[u, i - 1], 0.5 ** ((times.max() - t) / half_life))
    assert x[users[0], items[0] - 1] == 1.0
    np.testing.assert_allclose(gram, x.T @ x, rtol=1e-5, atol=1e-6)
    # Through the model: the config's half-life in days, a fit that uses it.
    model = EASE(EASEConfig(l2=10.0, half_life_days=half_life / 86_400_000), NUM_USERS, NUM_ITEMS)
    model.fit(train)
    expected = ease_reference(x, 10.0)
    np.testing.assert_allclose(model.weights.numpy()[1:], expected, rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="half_life_days > 0"):
        EASE(EASEConfig(half_life_days=0.0), NUM_USERS, NUM_ITEMS)


def test_ease_rejects_a_non_positive_l2() -> None:
    with pytest.raises(ValueError, match="l2 > 0"):
        EASE(EASEConfig(l2=0.0), NUM_USERS, NUM_ITEMS)
    with pytest.raises(ValueError, match="l2 > 0"):
        EASE(EASEConfig(), NUM_USERS, NUM_ITEMS).set_regularization(-1.0)


def _mean_losses(model: Recommender, batches: list[dict[str, Tensor]], steps: int) -> list[float]:
    """Losses of ``steps`` Adam steps cycling over ``batches``."""
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    losses = []
    for step in range(steps):
        optimizer.zero_grad()
        loss = model.loss(batches[step % len(batches)])
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_multvae_loss_finite_and_falling() -> None:
    model = build("multvae")
    rng = np.random.default_rng(0)
    batches = list(row_batches(block_world(), 16, NUM_ITEMS, rng))
    losses = _mean_losses(model, batches, steps=60)
    assert np.mean(losses[-6:]) < 0.9 * np.mean(losses[:6])


def test_multvae_anneals_beta_to_its_cap_in_training_only() -> None:
    config = MultVAEConfig(hidden_dim=16, latent_dim=4, beta_max=0.2, total_anneal_steps=1000)
    model = MultVAE(config, NUM_USERS, NUM_ITEMS)
    batch = next(row_batches(block_world(), 16, NUM_ITEMS, np.random.default_rng(0)))
    model.eval()
    model.loss(batch)
    assert model.beta == 0.0  # evaluation does not advance the schedule
    model.train()
    for _ in range(100):
        model.loss(batch)
    assert model.beta == pytest.approx(0.1)  # linear: 100 of 1000 steps
    for _ in range(150):
        model.loss(batch)
    assert model.beta == 0.2  # 0.25 on the line, capped
    assert int(model.state_dict()["anneal_step"]) == 250


def test_multvae_scores_the_posterior_mean_deterministically() -> None:
    model = build("multvae")
    query = model.example_query(batch_size=3, length=5)
    torch.testing.assert_close(scores(model, query), scores(model, query), rtol=0, atol=0)


def test_neumf_loss_finite_and_falling() -> None:
    model = build("neumf")
    rng = np.random.default_rng(0)
    batches = list(pair_batches(block_world(), 64, NUM_ITEMS, 4, rng))
    losses = _mean_losses(model, batches, steps=60)
    assert np.mean(losses[-4:]) < 0.9 * np.mean(losses[:4])


def test_neumf_all_item_scores_equal_pairwise_logits(monkeypatch: pytest.MonkeyPatch) -> None:
    # Eager scoring in chunks of 2 users: a chunk of 2 and one of 1 here.
    monkeypatch.setattr("recsys.models.neumf._ACTIVATION_FLOATS", 2 * NUM_ITEMS * 16)
    model = build("neumf")
    assert isinstance(model, NeuMF)
    for parameter in model.parameters():  # leave the near-zero initialisation
        nn.init.normal_(parameter, std=0.5)
    users = torch.tensor([3, 1, 7])
    every_item = torch.arange(1, NUM_ITEMS + 1).expand(3, -1)  # (B, I)
    with torch.no_grad():
        pairwise = model._logits(users, every_item)
    torch.testing.assert_close(scores(model, Query(user=users)), pairwise)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_onnx_export_matches_torch_at_another_batch_size(name: str, tmp_path: Path) -> None:
    model = build(name)
    if model.batch_kind == "fit":
        model.fit(block_world())
    else:
        batches = (
            row_batches(block_world(), 16, NUM_ITEMS, np.random.default_rng(0))
            if model.batch_kind == "rows"
            else pair_batches(block_world(), 64, NUM_ITEMS, 4, np.random.default_rng(0))
        )
        _mean_losses(model, list(batches), steps=5)
    session = onnx_session(model, tmp_path)
    queries = [model.example_query(batch_size=b, length=n) for b, n in [(5, 9), (1, 3)]]
    if model.input_kinds == ("history",):  # repeated items count once (EASE, MultVAE)
        queries.append(Query(history=torch.tensor([[0, 2, 2, 5, 2], [1, 1, 1, 1, 1]])))
    for query in queries:
        inputs = query.history if model.input_kinds == ("history",) else query.user
        assert inputs is not None
        (onnx_scores,) = session.run(["scores"], {model.input_kinds[0]: inputs.numpy()})
        assert onnx_scores.shape == (query.batch_size, NUM_ITEMS)
        np.testing.assert_allclose(onnx_scores, scores(model, query).numpy(), atol=1e-4)
