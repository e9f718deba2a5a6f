"""Fixtures shared by the library's tests."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.data.extract import IdMap, Snapshot, SnapshotDescriptor
from recsys.data.splits import Split, leave_last_out
from recsys.data.synthetic import SyntheticConfig, generate


@pytest.fixture(scope="session")
def small_split() -> Split:
    batch = generate(SyntheticConfig(num_users=150, num_items=80, num_interactions=3000, seed=5))
    events = batch.interactions.sort_values(["user_id", "occurred_at"], kind="stable")
    users, user_ids = np.unique(events["user_id"].to_numpy(), return_inverse=True)
    items, item_ids = np.unique(events["item_id"].to_numpy(), return_inverse=True)
    order = np.lexsort((events["occurred_at"].to_numpy(), user_ids))
    n = len(events)
    snapshot = Snapshot(
        user_idx=(user_ids[order] + 1).astype(np.int32),
        item_idx=(item_ids[order] + 1).astype(np.int32),
        occurred_at=events["occurred_at"].to_numpy()[order],
        value=np.full(n, np.nan, np.float32),
        event=np.zeros(n, np.int16),
        event_types=("view",),
        users=IdMap.from_ids(list(users)),
        items=IdMap.from_ids(list(items)),
        descriptor=SnapshotDescriptor(
            "sqlite", "", None, n, len(users), len(items), 0, 0, {}, None, None, None, ""
        ),
    )
    return leave_last_out(snapshot)
