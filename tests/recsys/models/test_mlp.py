"""The MLP uses side features for real: a new item is scored from its features alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import Tensor

from recsys.data.batches import pair_batches
from recsys.data.features import SideInfo
from recsys.data.splits import Ragged, TrainSet
from recsys.export import export_onnx
from recsys.models.base import Query
from recsys.models.mlp import MLP, MLPConfig

GROUP_USERS = 30
GROUP_ITEMS = 15
NUM_USERS = 2 * GROUP_USERS
NUM_ITEMS = 2 * GROUP_ITEMS
CONFIG = MLPConfig(embedding_dim=8, hidden=(16, 8), dropout=0.0, id_dropout=0.3)
GENRE_X = [1.0, 0.0, 0.0]  # item features: [genre X, genre Y, noise]
GENRE_Y = [0.0, 1.0, 0.0]


def genre_world(seed: int = 0) -> tuple[TrainSet, SideInfo]:
    """Group-A users (1..30) interact only with genre-X items (1..15), group B with genre Y.

    Features: users [group A, group B, noise], items [genre X, genre Y, noise]; row 0 padding.
    """
    rng = np.random.default_rng(seed)
    users, items = [], []
    for user in range(1, NUM_USERS + 1):
        offset = 0 if user <= GROUP_USERS else GROUP_ITEMS
        for item in rng.choice(GROUP_ITEMS, size=6, replace=False):
            users.append(user)
            items.append(int(item) + offset + 1)
    user_idx, item_idx = np.array(users, np.int32), np.array(items, np.int32)
    times = np.arange(len(users), dtype=np.int64)
    train = TrainSet(
        user_idx, item_idx, times, Ragged.from_groups(user_idx, item_idx, NUM_USERS + 1)
    )
    user_features = torch.zeros(NUM_USERS + 1, 3)
    user_features[1 : GROUP_USERS + 1, 0] = 1
    user_features[GROUP_USERS + 1 :, 1] = 1
    user_features[1:, 2] = torch.from_numpy(rng.normal(size=NUM_USERS).astype(np.float32))
    item_features = torch.zeros(NUM_ITEMS + 1, 3)
    item_features[1 : GROUP_ITEMS + 1, 0] = 1
    item_features[GROUP_ITEMS + 1 :, 1] = 1
    item_features[1:, 2] = torch.from_numpy(rng.normal(size=NUM_ITEMS).astype(np.float32))
    names = ("group_a", "group_b", "noise"), ("genre_x", "genre_y", "noise")
    return train, SideInfo(user_features, item_features, *names)


def trained(side: SideInfo | None, epochs: int = 15) -> MLP:
    train, _ = genre_world()
    torch.manual_seed(0)
    model = MLP(CONFIG, NUM_USERS, NUM_ITEMS, side)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    rng = np.random.default_rng(0)
    model.train()
    for _ in range(epochs):
        for batch in pair_batches(train, 64, NUM_ITEMS, 4, rng):
            optimizer.zero_grad()
            loss = model.loss(batch)
            assert torch.isfinite(loss)
            loss.backward()
            optimizer.step()
    return model.eval()


def scores(model: MLP, users: Tensor) -> Tensor:
    model.eval()
    with torch.inference_mode():
        return model.score(Query(user=users))


GROUP_A = torch.arange(1, GROUP_USERS + 1)
GROUP_B = torch.arange(GROUP_USERS + 1, NUM_USERS + 1)


def test_mlp_scores_a_new_item_by_its_features() -> None:
    model = trained(genre_world()[1])
    # Two items never seen in training, on the unknown id embedding: one of each genre.
    grown = model.with_new_items(torch.tensor([GENRE_X, GENRE_Y]))
    new_x, new_y = NUM_ITEMS, NUM_ITEMS + 1  # their score columns
    a, b = scores(grown, GROUP_A), scores(grown, GROUP_B)  # (30, I + 2)

    assert (a[:, new_x] > a.mean(dim=1)).all()  # above each group-A user's average
    assert (a[:, new_x] > a[:, new_y]).all()
    assert (b[:, new_y] > b.mean(dim=1)).all()
    assert (b[:, new_y] > b[:, new_x]).all()
    # The old items keep their scores.
    torch.testing.assert_close(a[:, :NUM_ITEMS], scores(model, GROUP_A))


def test_mlp_without_side_features_cannot_tell_new_items_apart() -> None:
    """The control for the test above: ids only give both new items the same scores."""
    model = trained(None, epochs=3)
    grown = model.with_new_items(torch.zeros(2, 0))
    a = scores(grown, GROUP_A)
    torch.testing.assert_close(a[:, NUM_ITEMS], a[:, NUM_ITEMS + 1], rtol=0, atol=0)


def test_mlp_id_dropout_applies_in_training_only() -> None:
    torch.manual_seed(0)
    model = MLP(MLPConfig(id_dropout=0.5), NUM_USERS, NUM_ITEMS, genre_world()[1])
    ids = torch.arange(1, 1001)
    model.train()
    dropped = model._drop_ids(ids)
    assert 400 < int((dropped == 0).sum()) < 600
    assert torch.equal(dropped[dropped > 0], ids[dropped > 0])
    model.eval()
    assert torch.equal(model._drop_ids(ids), ids)


def test_mlp_side_features_are_buffers_and_must_match_the_catalogue() -> None:
    _, side = genre_world()
    model = MLP(CONFIG, NUM_USERS, NUM_ITEMS, side)
    state = model.state_dict()
    assert torch.equal(state["user_features"], side.user_features)
    assert torch.equal(state["item_features"], side.item_features)
    with pytest.raises(ValueError, match="item features need 31 rows"):
        MLP(CONFIG, NUM_USERS, NUM_ITEMS, SideInfo(side.user_features, side.item_features[:-1]))


def test_mlp_all_item_scores_equal_pairwise_logits(monkeypatch: pytest.MonkeyPatch) -> None:
    # Eager scoring in chunks of 2 users: a chunk of 2 and one of 1 here.
    monkeypatch.setattr("recsys.models.mlp._ACTIVATION_FLOATS", 2 * NUM_ITEMS * 16)
    model = trained(genre_world()[1], epochs=1)
    users = torch.tensor([2, 45, 7])
    items = torch.arange(1, NUM_ITEMS + 1).expand(3, -1)  # (B, I)
    with torch.inference_mode():
        pairwise = model._head(
            model._user_half(users, users).unsqueeze(1) + model._item_half(items, items)
        )
    torch.testing.assert_close(scores(model, users), pairwise)


@pytest.mark.parametrize("with_side", [True, False])
def test_mlp_onnx_export_matches_torch_at_another_batch_size(
    with_side: bool, tmp_path: Path
) -> None:
    model = trained(genre_world()[1] if with_side else None, epochs=1)
    export_onnx(model, tmp_path / "mlp.onnx", metadata={})
    session = ort.InferenceSession(str(tmp_path / "mlp.onnx"), providers=["CPUExecutionProvider"])
    for batch_size in (7, 1):
        users = torch.randint(
            1, NUM_USERS + 1, (batch_size,), generator=torch.Generator().manual_seed(batch_size)
        )
        (onnx_scores,) = session.run(["scores"], {"user": users.numpy()})
        assert onnx_scores.shape == (batch_size, NUM_ITEMS)
        np.testing.assert_allclose(onnx_scores, scores(model, users).numpy(), atol=1e-4)
