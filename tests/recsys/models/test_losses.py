"""The next-item losses: sampled softmax (log-Q, collisions, seeds, memory) and gBCE."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from recsys.data.splits import Ragged, TrainSet
from recsys.errors import RecsysError
from recsys.models import build_model, parse_settings
from recsys.models.losses import (
    LossSpec,
    NextItemLoss,
    full_softmax_loss,
    gbce_beta,
    gbce_loss,
    sampled_softmax_loss,
)
from recsys.models.sasrec import SASRecConfig
from recsys.training import TrainConfig

DIM = 4


def _weights(num_items: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(num_items + 1, DIM, generator=generator)
    weight[0] = 0.0
    return weight.requires_grad_()


def _states(n: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, DIM, generator=generator).requires_grad_()


def test_sampled_loss_is_a_scalar_whose_gradient_reaches_only_the_rows_it_used() -> None:
    weight, states = _weights(50), _states(6)
    positives = torch.tensor([3, 7, 7, 12, 40, 50])
    negatives = torch.tensor([1, 9, 33])
    loss = sampled_softmax_loss(states, positives, negatives, weight)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert states.grad is not None and torch.count_nonzero(states.grad) > 0
    assert weight.grad is not None
    touched = set(torch.nonzero(weight.grad.abs().sum(1)).flatten().tolist())
    assert touched == {1, 3, 7, 9, 12, 33, 40, 50}  # positives and negatives; never row 0


def test_sampled_loss_with_log_q_matches_a_hand_computation() -> None:
    """Row loss = log(exp(s+) + sum_k exp(s_k - log q_k)) - s+; a collided negative drops out."""
    weight = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.5]])
    states = torch.tensor([[0.5, -0.2], [1.0, 2.0]])
    positives = torch.tensor([1, 3])
    negatives = torch.tensor([2, 3, 4])  # item 3 is row 1's own target
    q = torch.tensor([0.1, 0.3, 0.6])  # the chance each negative had to be drawn
    loss = sampled_softmax_loss(states, positives, negatives, weight, log_q=torch.log(q))

    def score(row: int, item: int) -> float:
        return float(states[row] @ weight[item])

    expected = []
    for row, target in enumerate(positives.tolist()):
        terms = [math.exp(score(row, target))]
        for item, chance in zip(negatives.tolist(), q.tolist(), strict=True):
            if item != target:
                terms.append(math.exp(score(row, item) - math.log(chance)))
        expected.append(math.log(sum(terms)) - score(row, target))
    assert loss.item() == pytest.approx(sum(expected) / 2, rel=1e-6)


def test_a_negative_equal_to_the_target_is_masked_out_of_that_row_only() -> None:
    weight, states = _weights(20), _states(2)
    positives = torch.tensor([5, 6])
    with_collision = sampled_softmax_loss(states, positives, torch.tensor([5, 8, 9]), weight)
    row_0 = sampled_softmax_loss(states[:1], positives[:1], torch.tensor([8, 9]), weight)
    row_1 = sampled_softmax_loss(states[1:], positives[1:], torch.tensor([5, 8, 9]), weight)
    assert with_collision.item() == pytest.approx((row_0.item() + row_1.item()) / 2, rel=1e-6)
    # Without the mask the target would also count as its own negative (the loss grows).
    every_negative = torch.tensor([5, 5, 5, 5])
    masked = sampled_softmax_loss(states[:1], positives[:1], every_negative, weight)
    assert masked.item() == pytest.approx(0.0, abs=1e-7)  # only the positive is left


@pytest.mark.parametrize("kind", ["sampled", "gbce"])
def test_shared_negatives_follow_the_seed(kind: str) -> None:
    objective = NextItemLoss(LossSpec(kind, num_negatives=8), num_items=1000)  # type: ignore[arg-type]
    hidden, target = _states(12).view(3, 4, DIM), torch.randint(0, 1001, (3, 4))
    weight = _weights(1000)
    values = []
    for _ in range(2):
        torch.manual_seed(7)
        values.append((objective.draw(torch.device("cpu")), objective(hidden, target, weight)))
    assert torch.equal(values[0][0], values[1][0]) and torch.equal(values[0][1], values[1][1])
    torch.manual_seed(8)
    assert not torch.equal(objective.draw(torch.device("cpu")), values[0][0])


class _Tensors(TorchDispatchMode):
    """The shapes of every tensor an op creates, forward and backward."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []
        self.storages: dict[tuple[int, ...], set[int]] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
                self.storages.setdefault(tuple(t.shape), set()).add(t.untyped_storage().data_ptr())
        return out


def _step_tensors(kind: str, num_items: int, positions: int = 64) -> _Tensors:
    objective = NextItemLoss(LossSpec(kind, num_negatives=32), num_items)  # type: ignore[arg-type]
    weight = torch.zeros(num_items + 1, DIM).requires_grad_()
    hidden = _states(positions)
    target = torch.randint(1, num_items + 1, (positions,))
    with _Tensors() as seen:
        objective(hidden, target, weight).backward()
    return seen


def _largest_step_tensor(kind: str, num_items: int) -> int:
    """Elements of the largest tensor a loss step creates, other than item-weight shaped ones."""
    shapes = _step_tensors(kind, num_items).shapes
    return max(math.prod(s) for s in shapes if s[:1] not in ((num_items,), (num_items + 1,)))


def test_sampled_loss_memory_does_not_grow_with_the_catalogue() -> None:
    small, large = _largest_step_tensor("sampled", 1_000), _largest_step_tensor("sampled", 100_000)
    assert small == large == 64 * (1 + 32)  # the (N, 1 + K) logits
    assert _largest_step_tensor("gbce", 100_000) == 64 * 32
    assert _largest_step_tensor("ce", 100_000) == 64 * 100_000  # the full softmax's logits
    # The dense (I + 1, D) embedding gradient is allocated once (indexing would do it twice).
    assert len(_step_tensors("sampled", 1_000).storages[(1_001, DIM)]) == 1


def test_gbce_matches_a_hand_computation_and_its_beta_its_limits() -> None:
    assert gbce_beta(256, 257, 0.75) == pytest.approx(1.0)  # every other item: plain BCE
    assert gbce_beta(10, 1001, 0.0) == pytest.approx(1.0)  # t = 0: BCE
    assert gbce_beta(10, 1001, 1.0) == pytest.approx(10 / 1000)  # t = 1: beta = alpha
    weight, states = _weights(100), _states(2)
    positives, negatives = torch.tensor([4, 9]), torch.tensor([9, 30, 31])
    loss = gbce_loss(states, positives, negatives, weight, 100, 0.5)
    beta = gbce_beta(3, 100, 0.5)

    def sigmoid(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    expected = 0.0
    for row, target in enumerate(positives.tolist()):
        s = [
            float(states[row].detach() @ weight[i].detach()) - math.log(3)  # the base rate
            for i in (target, *negatives)
        ]
        total = -beta * math.log(sigmoid(s[0]))
        total += sum(
            -math.log(1 - sigmoid(v))
            for v, item in zip(s[1:], negatives.tolist(), strict=True)
            if item != target
        )
        expected += total / 4
    assert loss.item() == pytest.approx(expected / 2, rel=1e-6)


def _train_set(items: list[list[int]]) -> TrainSet:
    values = np.array([i for row in items for i in row], dtype=np.int32)
    offsets = np.concatenate([[0, 0], np.cumsum([len(r) for r in items])]).astype(np.int64)
    users = np.repeat(np.arange(1, len(items) + 1), [len(r) for r in items]).astype(np.int32)
    return TrainSet(users, values, np.zeros(len(values), np.int64), Ragged(offsets, values))


def test_popularity_negatives_follow_training_counts_plus_one() -> None:
    objective = NextItemLoss(LossSpec("sampled", 20_000, "popularity"), num_items=4)
    objective.prepare(_train_set([[1, 1, 1, 1, 1, 1], [1, 2, 2, 3]]))  # counts 7, 2, 1, 0
    q = np.array([8, 3, 2, 1]) / 14
    np.testing.assert_allclose(objective.log_q.numpy(), np.log(q), rtol=1e-6)
    torch.manual_seed(0)
    drawn = np.bincount(objective.draw(torch.device("cpu")).numpy(), minlength=5)[1:]
    np.testing.assert_allclose(drawn / drawn.sum(), q, atol=0.01)
    assert "objective.cdf" not in build_model("sasrec", 3, 4).state_dict()


def test_sampled_loss_of_every_negative_at_once_is_near_the_full_softmax() -> None:
    """Uniform negatives covering the catalogue: the sampled softmax is the full one."""
    weight, states = _weights(30), _states(5).view(1, 5, DIM)
    target = torch.tensor([[3, 0, 17, 30, 1]])
    keep = target > 0
    full = full_softmax_loss(states, target, weight)
    every = torch.arange(1, 31)
    sampled = sampled_softmax_loss(states[keep], target[keep], every, weight)
    assert sampled.item() == pytest.approx(full.item(), rel=1e-5)


def test_loss_settings_parse_and_bad_ones_are_errors() -> None:
    config, _ = parse_settings(
        "sasrec", ["loss=sampled", "num_negatives=64", "sampler=popularity"], TrainConfig
    )
    assert (config.loss, config.num_negatives, config.sampler) == ("sampled", 64, "popularity")
    with pytest.raises(RecsysError, match="bad value 'softmax' for loss"):
        parse_settings("gru4rec", ["loss=softmax"], TrainConfig)
    bad = [
        ({"loss": "gbce", "sampler": "popularity"}, "sampler=popularity is for loss=sampled"),
        ({"loss": "sampled", "num_negatives": 0}, "num_negatives must be at least 1"),
        ({"loss": "gbce", "gbce_t": 1.5}, "gbce_t must be within"),
    ]
    for fields, message in bad:
        with pytest.raises(RecsysError, match=message):
            build_model("sasrec", 3, 10, config=SASRecConfig(**fields))  # type: ignore[arg-type]


def test_bce_takes_num_negatives_per_position() -> None:
    objective = NextItemLoss(LossSpec("bce", num_negatives=3), num_items=10)
    weight, hidden = _weights(10), _states(2)
    torch.manual_seed(0)
    value = objective(hidden, torch.tensor([4, 5]), weight)
    torch.manual_seed(0)
    negatives = torch.randint(1, 11, (2, 3))
    pos = (hidden * weight[torch.tensor([4, 5])]).sum(-1) - math.log(3)  # the base rate
    neg = (hidden.unsqueeze(1) * weight[negatives]).sum(-1) - math.log(3)
    expected = F.softplus(-pos).mean() + F.softplus(neg).sum(-1).mean()
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)


def test_mixed_negatives_add_the_batchs_targets_with_their_expected_counts() -> None:
    objective = NextItemLoss(LossSpec("sampled", 3, "mixed"), num_items=4)
    positives = torch.tensor([2, 1, 2, 4, 1])
    with pytest.raises(RuntimeError, match="prepare"):
        objective.with_targets(torch.tensor([1, 3, 3]), positives)
    objective.prepare(_train_set([[1, 1, 1, 1, 1, 1], [1, 2, 2, 3]]))  # counts 7, 2, 1, 0
    negatives, log_q = objective.with_targets(torch.tensor([1, 3, 3]), positives)
    assert negatives.tolist() == [1, 3, 3, 1, 2, 4]  # the uniform draw, then each target once
    p = (np.array([8, 3, 2, 1]) / 14)[negatives.numpy() - 1]
    expected = 3 / 4 + 1 - (1 - p) ** len(positives)
    np.testing.assert_allclose(log_q.numpy(), np.log(expected), rtol=1e-5)
    # Through the loss: finite, differentiable, each row's own target masked out of its negatives.
    weight = _weights(4).requires_grad_()
    hidden = _states(5)
    loss = objective(hidden, positives, weight)
    loss.backward()
    assert torch.isfinite(loss) and weight.grad is not None and torch.isfinite(weight.grad).all()
    with pytest.raises(RecsysError, match="sampler=mixed is for loss=sampled"):
        LossSpec("gbce", sampler="mixed").check(4)


def test_gbce_learns_a_next_item_rule_instead_of_collapsing() -> None:
    """At 256 shared negatives, SASRec with gbce learns "next is previous + 1" over 1,000
    items. With logits starting near 0 instead of at the base rate (-log K), the same run
    collapsed: every history got about the same top 10 (hit@10 0.015, 11 distinct top items
    among 200 histories), as gbce did on Amazon Toys."""
    items, batch, length = 1_000, 64, 20
    torch.manual_seed(0)
    config = SASRecConfig(embedding_dim=32, num_blocks=1, max_len=length, dropout=0.0, loss="gbce")
    model = build_model("sasrec", 10, items, config=config)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)

    def runs(n: int) -> torch.Tensor:  # (n, length + 1) item indices, each the last + 1
        start = torch.randint(1, items + 1, (n, 1))
        return (start + torch.arange(length + 1) - 1) % items + 1

    for _ in range(300):
        sequences = runs(batch)
        loss = model.loss({"history": sequences[:, :-1], "target": sequences[:, 1:]})
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    sequences = runs(200)
    with torch.no_grad():
        hidden = model._encode(sequences[:, :-1])[:, -1]  # type: ignore[attr-defined]
        top = (hidden @ model.items.weight[1:].T).topk(10).indices + 1  # type: ignore[operator]
    hit = (top == sequences[:, -1:]).any(1).float().mean().item()
    assert hit > 0.5
    assert len(set(top[:, 0].tolist())) > 50


@given(
    positions=st.integers(1, 12),
    items=st.integers(2, 40),
    with_bias=st.booleans(),
    scale=st.floats(0.1, 30.0),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=60, deadline=None)
def test_fused_full_softmax_matches_torchs_cross_entropy(
    positions: int, items: int, with_bias: bool, scale: float, seed: int
) -> None:
    """The fused loss (one (N, I) buffer) gives torch's loss and gradients, large logits too."""
    generator = torch.Generator().manual_seed(seed)
    hidden = (
        torch.randn(positions, 3, generator=generator, dtype=torch.float64) * scale
    ).requires_grad_()
    weight = torch.randn(items + 1, 3, generator=generator, dtype=torch.float64).requires_grad_()
    bias = torch.randn(items + 1, generator=generator, dtype=torch.float64).requires_grad_()
    target = torch.randint(0, items + 1, (positions,), generator=generator)
    target[0] = 1  # at least one position with a target
    used_bias = bias if with_bias else None
    fused = full_softmax_loss(hidden, target, weight, used_bias)
    keep = target > 0
    logits = hidden[keep] @ weight[1:].T + (bias[1:] if with_bias else 0.0)
    expected = F.cross_entropy(logits, target[keep] - 1)
    torch.testing.assert_close(fused, expected)
    inputs = (hidden, weight, bias) if with_bias else (hidden, weight)
    for got, want in zip(
        torch.autograd.grad(fused * 2.5, inputs),
        torch.autograd.grad(expected * 2.5, inputs),
        strict=True,
    ):
        torch.testing.assert_close(got, want)
