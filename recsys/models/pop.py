"""Pop: the most-popular baseline, every user gets the items ranked by training event count."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from recsys.data.features import SideInfo
from recsys.data.splits import TrainSet
from recsys.models.base import BatchKind, InputKind, Query, Recommender

# Counting needs no optimiser; the training loop only calls ``fit``.
TRAIN_DEFAULTS: dict[str, float | int] = {}


@dataclass(frozen=True)
class PopConfig:
    """Pop has no hyper-parameters; the empty config keeps the one-config-per-model contract."""


class Pop(Recommender):
    """Scores every item by its number of training events, the same for every query.

    The non-personalised reference point of the top-N literature (e.g. Cremonesi, Koren &
    Turrin, "Performance of Recommender Algorithms on Top-N Recommendation Tasks", RecSys
    2010). It counts events, not distinct users: a user who interacts with an item twice
    counts twice. The history input is read only for its batch size, so the ONNX graph has
    the same ``history`` input as every other history model.
    """

    input_kinds: ClassVar[tuple[InputKind, ...]] = ("history",)
    batch_kind: ClassVar[BatchKind] = "fit"
    is_popularity_baseline: ClassVar[bool] = True

    def __init__(
        self,
        config: PopConfig,
        num_users: int,
        num_items: int,
        side: SideInfo | None = None,
    ) -> None:
        super().__init__(num_users, num_items)
        self.config = config
        self.counts: Tensor
        self.register_buffer("counts", torch.zeros(num_items, dtype=torch.float32))  # (I,)

    def fit(self, train: TrainSet) -> None:
        counts = np.bincount(train.item_idx, minlength=self.num_items + 1)[1:]  # (I,)
        self.counts.copy_(torch.from_numpy(counts[: self.num_items].astype(np.float32)))

    def score(self, query: Query) -> Tensor:
        assert query.history is not None, "Pop scores histories (read only for their batch size)"
        # (B, 1) zeros broadcast against (I,): keeps the batch dimension dynamic in ONNX.
        zeros = torch.zeros_like(query.history[:, :1], dtype=torch.float32)  # (B, 1)
        return zeros + self.counts  # (B, I)
