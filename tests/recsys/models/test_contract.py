"""One contract suite run against every model in MODELS (see STYLE.md, "Tests").

The checkerboard world: two user groups, two item groups of 10; each user walks their group's
items in cyclic order from a random start and sees all ten. Leave-last-out holds out the
tenth, which is then the only unseen item of the user's group and also the next item of the
cycle, so a sequence model and a user/item model both know the right answer in advance.
"""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
import torch

from recsys.data.extract import IdMap, Snapshot, SnapshotDescriptor
from recsys.data.features import SideInfo
from recsys.data.splits import Split, leave_last_out
from recsys.evaluation import evaluate
from recsys.models import MODELS, build_model
from recsys.models.base import Query, Recommender, torch_scorer
from recsys.training import TrainConfig, train

GROUP_ITEMS = 10
NUM_ITEMS = 2 * GROUP_ITEMS
USERS_PER_GROUP = 30
NUM_USERS = 2 * USERS_PER_GROUP
CHECKERBOARD_TRAINING = TrainConfig(
    learning_rate=0.01,
    batch_size=32,
    max_epochs=60,
    patience=60,
    num_negatives=4,
    seed=0,
    threads=1,
    progress=False,
)


def _checkerboard() -> Snapshot:
    rng = np.random.default_rng(0)
    users, items = [], []
    for u in range(1, NUM_USERS + 1):
        group = 0 if u <= USERS_PER_GROUP else 1
        start = int(rng.integers(GROUP_ITEMS))
        for step in range(GROUP_ITEMS):
            users.append(u)
            items.append(group * GROUP_ITEMS + (start + step) % GROUP_ITEMS + 1)
    n = len(users)
    times = np.tile(np.arange(GROUP_ITEMS, dtype=np.int64) * 1000, NUM_USERS)
    descriptor = SnapshotDescriptor(
        "sqlite", "", None, n, NUM_USERS, NUM_ITEMS, NUM_USERS, NUM_ITEMS, {}, 0, 0, None, ""
    )
    return Snapshot(
        user_idx=np.array(users, np.int32),
        item_idx=np.array(items, np.int32),
        occurred_at=times,
        value=np.full(n, np.nan, np.float32),
        event=np.zeros(n, np.int16),
        event_types=("view",),
        users=IdMap.from_ids([f"u{i}" for i in range(1, NUM_USERS + 1)]),
        items=IdMap.from_ids([f"i{i}" for i in range(1, NUM_ITEMS + 1)]),
        descriptor=descriptor,
    )


def _side() -> SideInfo:
    """Group membership as the only side feature (row 0 is padding)."""
    users = torch.zeros(NUM_USERS + 1, 2)
    users[1 : USERS_PER_GROUP + 1, 0] = 1
    users[USERS_PER_GROUP + 1 :, 1] = 1
    items = torch.zeros(NUM_ITEMS + 1, 2)
    items[1 : GROUP_ITEMS + 1, 0] = 1
    items[GROUP_ITEMS + 1 :, 1] = 1
    return SideInfo(users, items, ("group_a", "group_b"), ("group_a", "group_b"))


@pytest.fixture(scope="module")
def checkerboard() -> Split:
    return leave_last_out(_checkerboard())


def _build(name: str) -> Recommender:
    torch.manual_seed(0)
    return build_model(name, NUM_USERS, NUM_ITEMS, side=_side())


@pytest.fixture(scope="module")
def trained(checkerboard: Split) -> dict[str, Recommender]:
    models = {}
    for name in MODELS:
        model = _build(name)
        train(model, checkerboard, CHECKERBOARD_TRAINING)
        models[name] = model
    return models


def _query(model: Recommender, batch: int, length: int) -> Query:
    return model.example_query(batch_size=batch, length=length)


@pytest.mark.parametrize("name", list(MODELS))
def test_contract_score_shape_is_batch_by_items(name: str, checkerboard: Split) -> None:
    model = _build(name)
    if model.batch_kind == "fit":
        model.fit(checkerboard.train)
    model.eval()
    for batch, length in ((1, 3), (5, 7)):
        scores = model.score(_query(model, batch, length))
        assert scores.shape == (batch, NUM_ITEMS)
        assert scores.dtype == torch.float32


@pytest.mark.parametrize("name", list(MODELS))
def test_contract_output_vectors_times_encode_are_the_scores(
    name: str, checkerboard: Split
) -> None:
    """A model with ``output_vectors`` (served through an item index when the catalogue is
    large) scores exactly as its user vectors times them; the others have none."""
    model = _build(name)
    if model.batch_kind == "fit":
        model.fit(checkerboard.train)
    model.eval()
    vectors = model.output_vectors()
    if vectors is None:
        with pytest.raises(NotImplementedError):
            model.encode(_query(model, 2, 4))
        return
    assert vectors.shape[0] == NUM_ITEMS and not vectors.requires_grad
    with torch.no_grad():
        for batch, length in ((1, 3), (5, 7)):
            query = _query(model, batch, length)
            users = model.encode(query)
            assert users.shape == (batch, vectors.shape[1])
            torch.testing.assert_close(users @ vectors.T, model.score(query))


@pytest.mark.parametrize("name", [n for n in MODELS if MODELS[n].batch_kind != "fit"])
def test_contract_loss_finite_and_falling(name: str, checkerboard: Split) -> None:
    model = _build(name)
    config = replace(CHECKERBOARD_TRAINING, max_epochs=1)
    from recsys.training import _batches

    rng = np.random.default_rng(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    batch = next(iter(_batches(model, checkerboard, config, rng)))
    model.train()
    first = float(model.loss(batch).detach())
    for _ in range(30):
        optimizer.zero_grad()
        loss = model.loss(batch)
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
    assert float(model.loss(batch).detach()) < first


@pytest.mark.parametrize("name", list(MODELS))
def test_contract_held_out_item_ranks_first(
    name: str, checkerboard: Split, trained: dict[str, Recommender]
) -> None:
    if name == "pop":
        pytest.skip("pop is not personalised: it ranks by popularity (tested in test_baselines)")
    model = trained[name]
    result = evaluate(
        torch_scorer(model),
        checkerboard.test,
        num_items=NUM_ITEMS,
        protocol="loo",
        ks=(10,),
        max_len=model.max_len or 50,
    )
    hit_at_1 = float(np.mean(result.per_user["mrr@10"] == 1.0))
    assert hit_at_1 >= 0.9, f"{name}: target first for only {hit_at_1:.0%} of users"


@pytest.mark.parametrize("name", list(MODELS))
def test_contract_eval_mode_is_deterministic(name: str, trained: dict[str, Recommender]) -> None:
    model = trained[name]
    model.eval()
    query = _query(model, 4, 6)
    torch.testing.assert_close(model.score(query), model.score(query), rtol=0, atol=0)


@pytest.mark.parametrize("name", list(MODELS))
def test_contract_save_load_weights_only_gives_identical_scores(
    name: str, trained: dict[str, Recommender]
) -> None:
    model = trained[name]
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    clone = _build(name)
    clone.load_state_dict(state)
    clone.eval()
    query = _query(model, 3, 5)
    torch.testing.assert_close(clone.score(query), model.score(query), rtol=0, atol=0)
