"""Caser: convolutional sequence embedding recommendation (Tang & Wang, WSDM 2018)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.data.features import SideInfo
from recsys.data.splits import TrainSet
from recsys.models.base import BatchKind, InputKind, Query, Recommender
from recsys.models.layers import (
    SEQUENCE_TRAIN_DEFAULTS,
    Dropout,
    item_embedding,
)
from recsys.models.losses import DEFAULT_GBCE_T, LossKind, LossSpec, NextItemLoss, Sampler
from recsys.models.space import OPTIMISER_SPACE, Choice, FloatRange, SearchSpace

TRAIN_DEFAULTS = SEQUENCE_TRAIN_DEFAULTS


@dataclass(frozen=True)
class CaserConfig:
    embedding_dim: int = 50
    window: int = 5  # L in the paper: how many recent items each prediction reads
    num_horizontal: int = 16  # n_h filters for each height 1..window
    num_vertical: int = 4  # n_v
    max_len: int = 50  # length of training batches; scoring reads only the last window
    dropout: float = 0.5
    # Next-item loss (models/losses.py): "ce" full softmax over all items (default), "bce"
    # sampled BCE, "sampled" sampled softmax over negatives shared by the batch, "gbce"
    # gSASRec's calibrated BCE on the same negatives (calibration gbce_t).
    loss: LossKind = "ce"
    num_negatives: int | None = None  # None: 1 per position for bce, 256 shared otherwise
    sampler: Sampler = "uniform"  # how loss=sampled draws: or "popularity", "mixed"
    gbce_t: float = DEFAULT_GBCE_T


# What `recsys tune` varies (recsys.models.space); the window stays the paper's.
SEARCH_SPACE: SearchSpace = {
    "embedding_dim": Choice((25, 50, 100)),
    "num_horizontal": Choice((4, 8, 16)),
    "num_vertical": Choice((2, 4, 8)),
    "dropout": FloatRange(0.0, 0.6),
    "max_len": Choice((20, 50, 100)),
    **OPTIMISER_SPACE,
    "batch_size": Choice((64, 128, 256)),
}


class Caser(Recommender):
    """Horizontal and vertical convolutions over the embeddings of the last ``window`` items.

    Tang & Wang, "Personalized Top-N Sequential Recommendation via Convolutional Sequence
    Embedding", WSDM 2018: the ``window`` x D embedding matrix of recent items goes through
    horizontal filters of every height 1..window (ReLU, max-pooled over time) and vertical
    filters (linear), then a ReLU fully-connected layer gives z; an output item embedding
    and bias score every item.

    Deviations from the paper:

    - No user embedding: the paper concatenates a user vector P_u to z. Scores here come
      from the history alone, so one exported graph also serves new users and anonymous
      sessions (``recommend_session``) with no per-user table that goes stale between
      retrains. Long-term taste is only what the last ``window`` items carry.
    - Training: every position t of a left-padded history is an example (the window ending
      at t predicts item t + 1) with full-softmax cross-entropy over all items, instead of
      sliding windows with T = 3 targets and binary cross-entropy with sampled negatives
      (``loss="bce"`` gives one negative per position; ``sampled`` and ``gbce``: see
      models/losses.py).
    - Windows shorter than ``window`` (the first items of a history) are padded with the
      zero padding embedding rather than skipped.
    """

    input_kinds: ClassVar[tuple[InputKind, ...]] = ("history",)
    batch_kind: ClassVar[BatchKind] = "sequence"

    def __init__(
        self,
        config: CaserConfig,
        num_users: int,
        num_items: int,
        side: SideInfo | None = None,
    ) -> None:
        super().__init__(num_users, num_items)
        self.config = config
        self.max_len = config.max_len
        dim, window = config.embedding_dim, config.window
        self.items = item_embedding(num_items, dim)
        self.horizontal = nn.ModuleList(
            nn.Conv2d(1, config.num_horizontal, (height, dim)) for height in range(1, window + 1)
        )
        self.vertical = nn.Conv2d(1, config.num_vertical, (window, 1))
        self.dropout = Dropout(config.dropout)
        self.fc = nn.Linear(config.num_horizontal * window + config.num_vertical * dim, dim)
        self.output_items = item_embedding(num_items, dim)
        self.output_bias = nn.Parameter(torch.zeros(num_items + 1))
        self.objective = NextItemLoss(LossSpec.of(config), num_items)

    def _encode(self, windows: Tensor) -> Tensor:
        """z (N, D) of item windows (N, window), most recent item last."""
        x = self.items(windows).unsqueeze(1)  # (N, 1, window, D)
        vertical = self.vertical(x).flatten(1)  # (N, n_v * D)
        horizontal = [
            torch.relu(conv(x).squeeze(3)).amax(dim=2)  # (N, n_h)
            for conv in self.horizontal
        ]
        features = torch.cat([vertical, *horizontal], dim=1)
        return torch.relu(self.fc(self.dropout(features)))  # (N, D)

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        history = batch["history"]  # (B, L)
        target = batch["target"]  # (B, L)
        padded = F.pad(history, (self.config.window - 1, 0))  # (B, window - 1 + L)
        windows = padded.unfold(1, self.config.window, 1)  # (B, L, window)
        keep = target > 0  # (B, L)
        hidden = self._encode(windows[keep])  # (N, D), only positions with a target
        loss: Tensor = self.objective(
            hidden, target[keep], self.output_items.weight, self.output_bias
        )
        return loss

    def prepare_training(self, train: TrainSet) -> None:
        self.objective.prepare(train)

    def score(self, query: Query) -> Tensor:
        assert query.history is not None, "Caser scores histories"
        window = self.config.window
        last = F.pad(query.history, (window - 1, 0))[:, -window:]  # (B, window)
        z = self._encode(last)  # (B, D)
        return z @ self.output_items.weight[1:].T + self.output_bias[1:]  # (B, I)

    def encode(self, query: Query) -> Tensor:
        assert query.history is not None, "Caser scores histories"
        window = self.config.window
        z = self._encode(F.pad(query.history, (window - 1, 0))[:, -window:])  # (B, D)
        return torch.cat([z, torch.ones_like(z[:, :1])], dim=1)  # (B, D + 1): 1 meets the bias

    def output_vectors(self) -> Tensor:
        weights = self.output_items.weight[1:]  # (I, D)
        return torch.cat([weights, self.output_bias[1:, None]], dim=1).detach()  # (I, D + 1)

    def item_vectors(self) -> Tensor:
        return self.items.weight[1:].detach()  # (I, D) the input embeddings
