"""Behaviour of the sequence models (SASRec, GRU4Rec, Caser) and their shared layers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import Tensor

from recsys.export import export_onnx
from recsys.models.base import Query, Recommender
from recsys.models.caser import Caser, CaserConfig
from recsys.models.gru4rec import GRU4Rec, GRU4RecConfig
from recsys.models.layers import (
    Dropout,
    attention_mask,
    grouped_states,
    length_groups,
    trim_left_padding,
)
from recsys.models.losses import full_softmax_loss
from recsys.models.sasrec import SASRec, SASRecConfig

NUM_USERS = 64
NUM_ITEMS = 30
MAX_LEN = 20

BUILDERS: dict[str, Callable[..., Recommender]] = {
    "sasrec": lambda **kw: SASRec(
        SASRecConfig(embedding_dim=32, num_heads=2, max_len=MAX_LEN, **kw), NUM_USERS, NUM_ITEMS
    ),
    "gru4rec": lambda **kw: GRU4Rec(
        GRU4RecConfig(embedding_dim=32, hidden_dim=48, max_len=MAX_LEN, **kw),
        NUM_USERS,
        NUM_ITEMS,
    ),
    "caser": lambda **kw: Caser(
        CaserConfig(embedding_dim=32, max_len=MAX_LEN, **kw), NUM_USERS, NUM_ITEMS
    ),
}


@pytest.fixture(params=sorted(BUILDERS))
def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def build(name: str, **config: object) -> Recommender:
    torch.manual_seed(0)
    return BUILDERS[name](**config)


def left_padded_histories(batch_size: int, length: int, seed: int) -> Tensor:
    """Random histories (B, L) with 0..L-1 leading pads per row (at least one item each)."""
    generator = torch.Generator().manual_seed(seed)
    history = torch.randint(1, NUM_ITEMS + 1, (batch_size, length), generator=generator)
    pads = torch.randint(0, length, (batch_size,), generator=generator)
    history[torch.arange(length).unsqueeze(0) < pads.unsqueeze(1)] = 0
    return history


def successor_task(seed: int = 0) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Sequences that always go i -> i + 1 (30 wraps to 1), as one all-position batch.

    Returns the training batch {"history", "target"} (B, L) built like ``sequence_batches``,
    each user's whole sequence as a query (B, L) and the held-out item that follows it (B,).
    """
    rng = np.random.default_rng(seed)
    window = np.zeros((NUM_USERS, MAX_LEN + 1), dtype=np.int64)
    following = np.zeros(NUM_USERS, dtype=np.int64)
    for user in range(NUM_USERS):
        start, length = rng.integers(0, NUM_ITEMS), rng.integers(3, MAX_LEN + 2)
        items = (start + np.arange(length)) % NUM_ITEMS + 1
        window[user, MAX_LEN + 1 - length :] = items
        following[user] = items[-1] % NUM_ITEMS + 1
    history, target = window[:, :-1], window[:, 1:].copy()
    target[history == 0] = 0
    batch = {"history": torch.from_numpy(history), "target": torch.from_numpy(target)}
    return batch, torch.from_numpy(window[:, 1:].copy()), torch.from_numpy(following)


def scores(model: Recommender, history: Tensor) -> Tensor:
    with torch.no_grad():
        return model.score(Query(history=history))


@pytest.mark.parametrize(("batch_size", "length"), [(1, 1), (3, 7), (4, 25)])
def test_score_shape_is_batch_by_items(name: str, batch_size: int, length: int) -> None:
    model = build(name).eval()
    out = scores(model, left_padded_histories(batch_size, length, seed=1))
    assert out.shape == (batch_size, NUM_ITEMS)
    assert torch.isfinite(out).all()


def test_model_contract_attributes(name: str) -> None:
    model = build(name)
    assert model.input_kinds == ("history",)
    assert model.batch_kind == "sequence"
    assert model.max_len == MAX_LEN
    assert model.num_items == NUM_ITEMS


def test_loss_falls_and_next_item_ranks_first(name: str) -> None:
    torch.manual_seed(0)
    model = build(name, dropout=0.1)
    batch, query, following = successor_task()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(100):
        optimizer.zero_grad()
        loss = model.loss(batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.25 * losses[0]
    model.eval()
    top = scores(model, query).argmax(dim=1) + 1  # column j is item j + 1
    assert (top == following).float().mean() >= 0.9


def test_sampled_softmax_learns_the_successor_task(name: str) -> None:
    torch.manual_seed(0)
    model = build(name, dropout=0.1, loss="sampled", num_negatives=8)
    batch, query, following = successor_task()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        model.loss(batch).backward()
        optimizer.step()
    model.eval()
    top = scores(model, query).argmax(dim=1) + 1
    assert (top == following).float().mean() >= 0.9


@pytest.mark.parametrize("loss", ["ce", "bce", "sampled", "gbce"])
def test_loss_is_finite_and_reaches_every_parameter_used(name: str, loss: str) -> None:
    model = build(name, loss=loss)
    batch, _, _ = successor_task(seed=1)
    value = model.loss(batch)
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    grad = model.get_parameter("items.weight").grad
    assert grad is not None
    assert torch.count_nonzero(grad[0]) == 0  # the padding row never learns


def test_extra_left_padding_leaves_scores_unchanged(name: str) -> None:
    model = build(name).eval()
    history = left_padded_histories(6, 9, seed=2)
    padded = torch.cat([torch.zeros(6, 7, dtype=torch.int64), history], dim=1)
    torch.testing.assert_close(scores(model, padded), scores(model, history), atol=1e-5, rtol=0)


def test_rows_score_independently_of_their_batch(name: str) -> None:
    model = build(name).eval()
    history = left_padded_histories(5, 12, seed=3)
    together = scores(model, history)
    for row in range(5):
        alone = scores(model, history[row : row + 1])
        torch.testing.assert_close(together[row : row + 1], alone, atol=1e-5, rtol=0)


def test_training_loss_of_a_short_row_ignores_the_padding_around_it(name: str) -> None:
    model = build(name).eval()
    batch, _, _ = successor_task(seed=4)
    lengths = (batch["target"] > 0).sum(dim=1)
    full, short = int(lengths.argmax()), int(lengths.argmin())
    assert batch["history"][full, 0] > 0  # the full row keeps every column in the batch

    def row_loss(row: int, width: int) -> Tensor:
        return model.loss({key: value[row : row + 1, -width:] for key, value in batch.items()})

    together = model.loss({key: value[[full, short]] for key, value in batch.items()})
    n_full, n_short = int(lengths[full]), int(lengths[short])
    separate = row_loss(full, MAX_LEN) * n_full + row_loss(short, n_short) * n_short
    torch.testing.assert_close(together * (n_full + n_short), separate, atol=1e-4, rtol=1e-5)


def test_eval_scores_are_deterministic(name: str) -> None:
    model = build(name).eval()
    history = left_padded_histories(4, 10, seed=5)
    assert torch.equal(scores(model, history), scores(model, history))


def test_onnx_export_matches_torch_at_other_shapes(name: str, tmp_path: Path) -> None:
    model = build(name).eval()
    example = model.example_query(batch_size=2, length=8).history
    assert example is not None
    path = tmp_path / f"{name}.onnx"
    export_onnx(model, path, metadata={})
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for batch_size, length in [(5, 13), (1, 3), (3, 25)]:
        history = left_padded_histories(batch_size, length, seed=batch_size)
        (onnx_scores,) = session.run(["scores"], {"history": history.numpy()})
        np.testing.assert_allclose(onnx_scores, scores(model, history).numpy(), atol=1e-4)


def test_attention_mask_hides_future_and_padding() -> None:
    history = torch.tensor([[0, 0, 3, 4], [1, 2, 3, 4]])
    allowed = attention_mask(history) == 0  # (B, 1, L, L)
    assert allowed.shape == (2, 1, 4, 4)
    assert torch.equal(allowed[1, 0], torch.ones(4, 4).tril().bool())
    assert not allowed[0, 0, :, :2].any()  # nobody reads the padding
    assert allowed[0, 0, 3].tolist() == [False, False, True, True]


def test_full_softmax_loss_ignores_padding_targets() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(2, 3, 4)
    weight = torch.randn(NUM_ITEMS + 1, 4)
    target = torch.tensor([[0, 5, 7], [0, 0, 30]])
    logits = hidden @ weight[1:].T  # (B, L, I)
    expected = torch.stack(
        [
            torch.nn.functional.cross_entropy(logits[b, t], target[b, t] - 1)
            for b, t in [(0, 1), (0, 2), (1, 2)]
        ]
    ).mean()
    torch.testing.assert_close(full_softmax_loss(hidden, target, weight), expected)


def test_full_softmax_loss_without_targets_is_a_differentiable_zero() -> None:
    hidden = torch.randn(2, 3, 4, requires_grad=True)
    loss = full_softmax_loss(hidden, torch.zeros(2, 3).long(), torch.randn(NUM_ITEMS + 1, 4))
    loss.backward()
    assert loss.item() == 0.0
    assert hidden.grad is not None


def test_trim_left_padding_keeps_every_item() -> None:
    history = torch.tensor([[0, 0, 0, 1, 2], [0, 0, 3, 4, 5]])
    target = torch.tensor([[0, 0, 0, 2, 6], [0, 0, 4, 5, 7]])
    trimmed_history, trimmed_target = trim_left_padding(history, target)
    assert torch.equal(trimmed_history, history[:, 2:])
    assert torch.equal(trimmed_target, target[:, 2:])


def test_length_groups_hold_every_row_once_and_encode_fewer_positions() -> None:
    history = left_padded_histories(16, MAX_LEN, seed=6)
    history[3] = torch.arange(1, MAX_LEN + 1)  # one full row pads the batch to MAX_LEN
    history[:, : MAX_LEN - 4] *= (torch.arange(16) == 3).unsqueeze(1)  # the rest <= 4 items
    target = torch.where(history > 0, history % NUM_ITEMS + 1, 0)
    groups = length_groups(history, target, overhead=0)
    assert len(groups) > 1
    rows = sorted(tuple(row[row > 0].tolist()) for part, _ in groups for row in part)
    assert rows == sorted(tuple(row[row > 0].tolist()) for row in history)
    for part, part_target in groups:
        assert bool((part[:, 0] > 0).any())  # trimmed: no all-padding leading column
        assert torch.equal(part_target > 0, part > 0)
    assert sum(part.numel() for part, _ in groups) < history.numel() // 2
    assert len(length_groups(history, target, overhead=10**6)) == 1


@pytest.mark.parametrize("model_name", ["sasrec", "gru4rec"])
def test_training_in_length_groups_gives_the_loss_and_gradients_of_one_pass(
    model_name: str,
) -> None:
    model = build(model_name).eval()  # no dropout: both passes see the same function
    encode = model._encode if isinstance(model, SASRec) else model._aligned  # type: ignore[attr-defined]
    batch, _, _ = successor_task(seed=7)
    history, target = batch["history"], batch["target"]
    assert len(length_groups(history, target, overhead=0)) > 1
    weight = model.get_parameter("items.weight")

    def gradients(states: Tensor, targets: Tensor) -> tuple[Tensor, list[Tensor]]:
        model.zero_grad()
        loss: Tensor = model.objective(states, targets, weight)  # type: ignore[operator]
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    keep = target > 0
    one_loss, one_grads = gradients(encode(history)[keep], target[keep])
    grouped_loss, grouped_grads = gradients(*grouped_states(encode, history, target, overhead=0))
    torch.testing.assert_close(grouped_loss, one_loss, atol=1e-5, rtol=1e-5)
    assert len(grouped_grads) == len(one_grads)
    for grouped, one in zip(grouped_grads, one_grads, strict=True):
        torch.testing.assert_close(grouped, one, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_byte_dropout_drops_at_its_rate_keeps_the_mean_and_follows_the_seed(p: float) -> None:
    """Every byte it reads is uniform: one biased byte in eight (an int64's top byte holds 7
    random bits) would drop 1/8 of the elements at p = 0.5 and shift the rate by 0.06."""
    layer = Dropout(p).train()
    x = torch.ones(1_000_003)
    torch.manual_seed(0)
    out = layer(x)
    dropped = (out == 0).float().mean().item()
    assert dropped == pytest.approx(round(p * 256) / 256, abs=0.003)
    assert out.mean().item() == pytest.approx(1.0, abs=0.005)
    kept = out[out != 0]
    assert torch.allclose(kept, torch.full_like(kept, 256 / (256 - round(p * 256))))
    torch.manual_seed(0)
    assert torch.equal(layer(x), out)
    torch.manual_seed(1)
    assert not torch.equal(layer(x), out)
    x = torch.randn(4, 5, 6, requires_grad=True)
    out = layer(x)
    out.sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad * x.detach(), out.detach())  # gradient = mask * scale
    layer.eval()
    assert torch.equal(layer(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
