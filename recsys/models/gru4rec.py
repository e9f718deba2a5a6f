"""GRU4Rec: session-based recommendation with recurrent neural networks (Hidasi et al., 2016)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from recsys.data.features import SideInfo
from recsys.data.splits import TrainSet
from recsys.models.base import BatchKind, InputKind, Query, Recommender
from recsys.models.layers import (
    SEQUENCE_TRAIN_DEFAULTS,
    Dropout,
    grouped_states,
    item_embedding,
)
from recsys.models.losses import DEFAULT_GBCE_T, LossKind, LossSpec, NextItemLoss, Sampler
from recsys.models.space import OPTIMISER_SPACE, Choice, FloatRange, IntRange, SearchSpace

TRAIN_DEFAULTS = SEQUENCE_TRAIN_DEFAULTS


@dataclass(frozen=True)
class GRU4RecConfig:
    embedding_dim: int = 64
    hidden_dim: int = 100
    num_layers: int = 1
    max_len: int = 50
    dropout: float = 0.2
    # Next-item loss (models/losses.py): "ce" full softmax over all items (default), "bce"
    # sampled BCE, "sampled" sampled softmax over negatives shared by the batch, "gbce"
    # gSASRec's calibrated BCE on the same negatives (calibration gbce_t).
    loss: LossKind = "ce"
    num_negatives: int | None = None  # None: 1 per position for bce, 256 shared otherwise
    sampler: Sampler = "uniform"  # how loss=sampled draws: or "popularity", "mixed"
    gbce_t: float = DEFAULT_GBCE_T


# What `recsys tune` varies (recsys.models.space).
SEARCH_SPACE: SearchSpace = {
    "embedding_dim": Choice((32, 64, 128)),
    "hidden_dim": Choice((64, 100, 200)),
    "num_layers": IntRange(1, 2),
    "dropout": FloatRange(0.0, 0.5),
    "max_len": Choice((20, 50, 100)),
    **OPTIMISER_SPACE,
    "batch_size": Choice((64, 128, 256)),
}


class GRU4Rec(Recommender):
    """A GRU reads the item history; its state after each item scores the next item.

    Hidasi, Karatzoglou, Baltrunas & Tikk, "Session-based Recommendations with Recurrent
    Neural Networks", ICLR 2016 (embedding-input variant, one GRU layer of 100 units).

    Deviations from the paper:

    - Training: whole left-padded histories with next-item full-softmax cross-entropy at every
      position replace session-parallel mini-batches with TOP1/BPR ranking losses over
      in-batch negatives (the cross-entropy variant is what later GRU4Rec work recommends);
      ``loss="sampled"`` gives a sampled softmax over negatives shared by the batch, closer to
      the paper's sampling for large catalogues (models/losses.py).
    - Output layer: the GRU state is projected to D and scored against the input item
      embedding (weight tying) instead of a separate output weight matrix.
    - Left padding would otherwise drive the state away from zero before the first item (the
      GRU biases act even on a zero embedding). Each row is rotated so its items come first
      and padding last; the causal GRU then reads no padding before any item, and the output
      at each item is rotated back (training) or read at the last item (scoring). Plain
      gathers keep this ONNX-exportable with a dynamic length.
    """

    input_kinds: ClassVar[tuple[InputKind, ...]] = ("history",)
    batch_kind: ClassVar[BatchKind] = "sequence"

    def __init__(
        self,
        config: GRU4RecConfig,
        num_users: int,
        num_items: int,
        side: SideInfo | None = None,
    ) -> None:
        super().__init__(num_users, num_items)
        self.config = config
        self.max_len = config.max_len
        self.items = item_embedding(num_items, config.embedding_dim)
        self.input_dropout = Dropout(config.dropout)
        self.gru = nn.GRU(
            config.embedding_dim,
            config.hidden_dim,
            num_layers=config.num_layers,
            batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.output_dropout = Dropout(config.dropout)
        self.projection = nn.Linear(config.hidden_dim, config.embedding_dim)
        self.objective = NextItemLoss(LossSpec.of(config), num_items)

    def _run(self, history: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """GRU outputs over right-aligned rows (B, L, D), pad counts (B,), positions (L,)."""
        length = history.shape[1]
        positions = torch.arange(length, device=history.device)  # (L,)
        pads = (history == 0).sum(dim=1)  # (B,)
        # Rotate left by the pad count: items first (in order), padding last.
        right = history.gather(1, (positions.unsqueeze(0) + pads.unsqueeze(1)) % length)
        states, _ = self.gru(self.input_dropout(self.items(right)))  # (B, L, H)
        out = self.projection(self.output_dropout(states))  # (B, L, D)
        return out, pads, positions

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        # Each group of grouped_states is trimmed of its all-padding columns.
        history = batch["history"][:, -self.config.max_len :]  # (B, L)
        target = batch["target"][:, -self.config.max_len :]  # (B, L)
        states, targets = grouped_states(self._aligned, history, target)  # (N, D), (N,)
        loss: Tensor = self.objective(states, targets, self.items.weight)
        return loss

    def _aligned(self, history: Tensor) -> Tensor:
        """Outputs (B, L, D) at the positions of a left-padded history (B, L)."""
        out, pads, positions = self._run(history)  # (B, L, D)
        length = history.shape[1]
        back = (positions.unsqueeze(0) - pads.unsqueeze(1)) % length  # (B, L)
        return out.gather(1, back.unsqueeze(-1).expand(-1, -1, out.shape[2]))

    def prepare_training(self, train: TrainSet) -> None:
        self.objective.prepare(train)

    def encode(self, query: Query) -> Tensor:
        assert query.history is not None, "GRU4Rec scores histories"
        history = query.history[:, -self.config.max_len :]  # (B, L)
        out, pads, _ = self._run(history)  # (B, L, D)
        # Output at the last item (index 0 for an empty history, whose scores are arbitrary).
        last = (history.shape[1] - 1 - pads).clamp(min=0)  # (B,)
        return out.gather(1, last.view(-1, 1, 1).expand(-1, 1, out.shape[2])).squeeze(1)

    def score(self, query: Query) -> Tensor:
        return self.encode(query) @ self.items.weight[1:].T  # (B, I)

    def output_vectors(self) -> Tensor:
        return self.items.weight[1:].detach()  # (I, D) the tied output layer

    def item_vectors(self) -> Tensor:
        return self.items.weight[1:].detach()  # (I, D) the input embeddings
