"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018)."""

from __future__ import annotations

import math
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
    TransformerBlock,
    attention_mask,
    grouped_states,
    item_embedding,
)
from recsys.models.losses import DEFAULT_GBCE_T, LossKind, LossSpec, NextItemLoss, Sampler
from recsys.models.space import OPTIMISER_SPACE, Choice, FloatRange, IntRange, SearchSpace

# Length-grouped batches: SASRec trims all-padding columns, so an epoch on ml-100k takes about
# two thirds of the time and reaches the same validation NDCG@10 or better. The rate goes with
# the defaults below (D = 128, dropout 0.5).
TRAIN_DEFAULTS: dict[str, float | int] = {
    **SEQUENCE_TRAIN_DEFAULTS,
    "learning_rate": 2e-3,
    "length_pool": 8,
}


@dataclass(frozen=True)
class SASRecConfig:
    # D = 128, two heads, dropout 0.5 (the SASRec paper's rate for its sparse datasets) since
    # 2026-12-07: on Amazon Toys test NDCG@10 0.0632 where D = 64, one head, dropout 0.2 and
    # a rate of 3e-3 gave 0.0593 (same seed; benchmarks/README.md, "Time to quality"); on
    # ml-100k level on validation (0.1052 against 0.1070) at twice the seconds per epoch.
    embedding_dim: int = 128
    num_blocks: int = 2
    num_heads: int = 2
    max_len: int = 200
    dropout: float = 0.5
    # Next-item loss (models/losses.py): "ce" full softmax over all items (default), "bce"
    # sampled BCE, "sampled" sampled softmax over negatives shared by the batch, "gbce"
    # gSASRec's calibrated BCE on the same negatives (calibration gbce_t).
    loss: LossKind = "ce"
    num_negatives: int | None = None  # None: 1 per position for bce, 256 shared otherwise
    sampler: Sampler = "uniform"  # how loss=sampled draws: or "popularity", "mixed"
    gbce_t: float = DEFAULT_GBCE_T


# What `recsys tune` varies (recsys.models.space): heads always divide the embedding size.
SEARCH_SPACE: SearchSpace = {
    "embedding_dim": Choice((32, 64, 128)),
    "num_blocks": IntRange(1, 3),
    "num_heads": Choice((1, 2, 4)),
    "dropout": FloatRange(0.0, 0.7),
    "max_len": Choice((50, 100, 200)),
    **OPTIMISER_SPACE,
    "batch_size": Choice((64, 128, 256)),
}


class SASRec(Recommender):
    """Causal self-attention over the item history; the last position scores the next item.

    Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018: item + learned
    position embeddings, stacked causal self-attention blocks with point-wise feed-forward
    layers, and the item embedding shared as the output layer.

    Deviations from the paper:

    - Loss: full-softmax cross-entropy over all items at every position by default, instead of
      binary cross-entropy with one sampled negative (Klenitskiy & Vasilev, "Turning Dross Into
      Gold Loss: is BERT4Rec really better than SASRec?", RecSys 2023). ``loss="bce"`` restores
      the paper's objective (negatives drawn uniformly, not re-drawn when they hit the history);
      ``loss="sampled"`` (sampled softmax) and ``loss="gbce"`` (gSASRec) keep a training step's
      memory independent of the catalogue (models/losses.py).
    - Blocks are standard pre-LN (``x + attn(LN(x))``, ``x + ffn(LN(x))``, a final LayerNorm);
      the paper's code normalises only the attention query and adds the residual to it.
    - Positions count back from the most recent item: a history of length L uses the last L
      of ``max_len`` position embeddings, so left-padded inputs of any length line up with
      training. Histories longer than ``max_len`` are cut to their most recent items.
    - Item embeddings are scaled by sqrt(D) before adding positions, as in the paper's code.
    """

    input_kinds: ClassVar[tuple[InputKind, ...]] = ("history",)
    batch_kind: ClassVar[BatchKind] = "sequence"
    padding_invariant: ClassVar[bool] = True

    def __init__(
        self,
        config: SASRecConfig,
        num_users: int,
        num_items: int,
        side: SideInfo | None = None,
    ) -> None:
        super().__init__(num_users, num_items)
        self.config = config
        self.max_len = config.max_len
        dim = config.embedding_dim
        self.items = item_embedding(num_items, dim)
        self.positions = nn.Embedding(config.max_len, dim)
        nn.init.normal_(self.positions.weight, std=dim**-0.5)
        self.embedding_dropout = Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, config.num_heads, config.dropout)
            for _ in range(config.num_blocks)
        )
        self.final_norm = nn.LayerNorm(dim)
        self.objective = NextItemLoss(LossSpec.of(config), num_items)

    def _encode(self, history: Tensor) -> Tensor:
        """Hidden states (B, L, D) of a left-padded history (B, L); zero at padding."""
        length = history.shape[1]
        keep = (history > 0).unsqueeze(-1).to(torch.float32)  # (B, L, 1)
        positions = self.positions.weight[self.config.max_len - length :]  # (L, D)
        x = self.items(history) * math.sqrt(self.config.embedding_dim) + positions
        x = self.embedding_dropout(x) * keep  # (B, L, D)
        mask = attention_mask(history)  # (B, 1, L, L)
        for block in self.blocks:
            x = block(x, mask) * keep
        hidden: Tensor = self.final_norm(x)
        return hidden

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        # Each group of grouped_states is trimmed of its all-padding columns.
        history = batch["history"][:, -self.config.max_len :]  # (B, L)
        target = batch["target"][:, -self.config.max_len :]  # (B, L)
        states, targets = grouped_states(self._encode, history, target)  # (N, D), (N,)
        loss: Tensor = self.objective(states, targets, self.items.weight)
        return loss

    def prepare_training(self, train: TrainSet) -> None:
        self.objective.prepare(train)

    def encode(self, query: Query) -> Tensor:
        assert query.history is not None, "SASRec scores histories"
        history = query.history[:, -self.config.max_len :]  # (B, L)
        return self._encode(history)[:, -1]  # (B, D) the last position's hidden state

    def score(self, query: Query) -> Tensor:
        return self.encode(query) @ self.items.weight[1:].T  # (B, I)

    def output_vectors(self) -> Tensor:
        return self.items.weight[1:].detach()  # (I, D) the shared item embedding

    def item_vectors(self) -> Tensor:
        return self.items.weight[1:].detach()  # (I, D) the input embeddings
