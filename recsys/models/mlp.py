"""MLP: the platform's feed-forward scorer of (user, item) pairs from ids and side features."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.data.features import SideInfo
from recsys.models.base import BatchKind, InputKind, Query, Recommender
from recsys.models.space import OPTIMISER_SPACE, Choice, FloatRange, SearchSpace

TRAIN_DEFAULTS: dict[str, float | int] = {
    "learning_rate": 1e-3,
    "weight_decay": 1e-5,
    "batch_size": 512,
    "max_epochs": 50,
    "patience": 5,
    "num_negatives": 4,
}


# Largest (users, I, H) activation built at a time when scoring in eager mode (128 MB).
_ACTIVATION_FLOATS = 1 << 25


@dataclass(frozen=True)
class MLPConfig:
    embedding_dim: int = 32
    hidden: tuple[int, ...] = (64, 32)
    dropout: float = 0.1
    # Chance that a training pair reads the shared "unknown" id embedding (row 0) instead of
    # its own, drawn for users and items independently: the network must also learn to score
    # from features alone, which is what a new item or user has.
    id_dropout: float = 0.2


# What `recsys tune` varies (recsys.models.space).
SEARCH_SPACE: SearchSpace = {
    "embedding_dim": Choice((16, 32, 64)),
    "dropout": FloatRange(0.0, 0.5),
    "id_dropout": FloatRange(0.0, 0.5),
    **OPTIMISER_SPACE,
    "batch_size": Choice((256, 512, 1024)),
}


class MLP(Recommender):
    """``sigmoid(MLP([e_u ; x_u ; e_i ; x_i]))`` with id embeddings e and side features x.

    The feed-forward recommender of the Wide & Deep / YouTube-DNN family (Cheng et al., "Wide
    & Deep Learning for Recommender Systems", DLRS 2016; Covington et al., "Deep Neural
    Networks for YouTube Recommendations", RecSys 2016), written for this platform: user and
    item id embeddings concatenated with their side features (``SideInfo``: demographics,
    genres, year, price, training popularity; see ``recsys.data.features``), Dense + ReLU
    layers, one logit; trained with binary cross-entropy, each positive against the batch's
    sampled negatives.

    - Side features are buffers: saved in the state dict and baked into the ONNX graph, which
      therefore still takes only ``user`` indices.
    - Id dropout (``config.id_dropout``) swaps ids for row 0 of their embedding table, a
      learned "unknown" embedding; items appended later with ``with_new_items`` start from
      it, so they are scored from their features.
    - Scoring all items never builds the (B, I, F) concatenation: the first layer is linear,
      so a (B, 1, H) user half and a (1, I, H) item half are added before the ReLU. In eager
      mode (evaluation) users are scored in chunks so the (B, I, H) activations stay near
      128 MB; the exported graph scores its whole batch at once.
    - ``score`` returns logits; the sigmoid is monotonic, so rankings are the same.
    - Without ``side`` the model degrades to ids only (a neural collaborative filter with one
      tower) and cannot score new items better than the unknown embedding does.

    Deviations from Wide & Deep: no wide (crossed-feature linear) part; negatives are drawn
    uniformly from all items rather than from served impressions.
    """

    input_kinds: ClassVar[tuple[InputKind, ...]] = ("user",)
    batch_kind: ClassVar[BatchKind] = "pairs"
    uses_side_features: ClassVar[bool] = True

    def __init__(
        self,
        config: MLPConfig,
        num_users: int,
        num_items: int,
        side: SideInfo | None = None,
    ) -> None:
        super().__init__(num_users, num_items)
        self.config = config
        if side is None:
            side = SideInfo(torch.zeros(num_users + 1, 0), torch.zeros(num_items + 1, 0))
        if side.user_features.shape[0] != num_users + 1:
            raise ValueError(f"user features need {num_users + 1} rows (row 0 is padding)")
        if side.item_features.shape[0] != num_items + 1:
            raise ValueError(f"item features need {num_items + 1} rows (row 0 is padding)")
        self.user_feature_names = side.user_feature_names
        self.item_feature_names = side.item_feature_names
        self.user_features: Tensor
        self.item_features: Tensor
        self.register_buffer("user_features", side.user_features.to(torch.float32).clone())
        self.register_buffer("item_features", side.item_features.to(torch.float32).clone())
        dim, first = config.embedding_dim, config.hidden[0]
        # Row 0 is not padding here but the learned "unknown" id (see id_dropout).
        self.user_ids = nn.Embedding(num_users + 1, dim)
        self.item_ids = nn.Embedding(num_items + 1, dim)
        nn.init.normal_(self.user_ids.weight, std=dim**-0.5)
        nn.init.normal_(self.item_ids.weight, std=dim**-0.5)
        # The first layer on [e_u ; x_u ; e_i ; x_i], split by input block.
        self.first_user_ids = nn.Linear(dim, first)
        self.first_item_ids = nn.Linear(dim, first, bias=False)
        self.first_user_features = _feature_layer(self.user_features.shape[1], first)
        self.first_item_features = _feature_layer(self.item_features.shape[1], first)
        sizes = list(config.hidden)
        self.tower = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.output = nn.Linear(sizes[-1], 1)
        self.dropout = nn.Dropout(config.dropout)

    def _drop_ids(self, ids: Tensor) -> Tensor:
        """In training, each id becomes 0 (the unknown row) with probability ``id_dropout``."""
        if not self.training or self.config.id_dropout <= 0:
            return ids
        dropped = torch.rand(ids.shape, device=ids.device) < self.config.id_dropout
        return ids.masked_fill(dropped, 0)

    def _user_half(self, users: Tensor, ids: Tensor) -> Tensor:
        """First-layer pre-activation (..., H) of the user block, bias included.

        ``ids`` pick the id embeddings (``users`` or their id-dropped copy); ``users`` the
        features.
        """
        half: Tensor = self.first_user_ids(self.user_ids(ids))
        if self.first_user_features is not None:
            half = half + self.first_user_features(self.user_features[users])
        return half

    def _item_half(self, items: Tensor, ids: Tensor) -> Tensor:
        """First-layer pre-activation (..., H) of the item block; ``ids`` as in _user_half."""
        half: Tensor = self.first_item_ids(self.item_ids(ids))
        if self.first_item_features is not None:
            half = half + self.first_item_features(self.item_features[items])
        return half

    def _head(self, pre_activation: Tensor) -> Tensor:
        """Logits (B, K) from first-layer pre-activations (B, K, H)."""
        hidden = self.dropout(F.relu(pre_activation))
        for layer in self.tower:
            hidden = self.dropout(F.relu(layer(hidden)))  # (B, K, H')
        logits: Tensor = self.output(hidden).squeeze(-1)  # (B, K)
        return logits

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        items = torch.cat([batch["item"].unsqueeze(1), batch["negatives"]], dim=1)  # (B, 1 + N)
        users = batch["user"]  # (B,)
        user_half = self._user_half(users, self._drop_ids(users)).unsqueeze(1)  # (B, 1, H)
        item_half = self._item_half(items, self._drop_ids(items))  # (B, 1 + N, H)
        logits = self._head(user_half + item_half)  # (B, 1 + N)
        labels = torch.zeros_like(logits)
        labels[:, 0] = 1.0
        return F.binary_cross_entropy_with_logits(logits, labels)

    def score(self, query: Query) -> Tensor:
        assert query.user is not None, "MLP scores users"
        users = query.user  # (B,)
        user_half = self._user_half(users, users).unsqueeze(1)  # (B, 1, H)
        all_items = torch.arange(1, self.num_items + 1, device=users.device)  # (I,)
        item_half = self._item_half(all_items, all_items).unsqueeze(0)  # (1, I, H)
        if torch.onnx.is_in_onnx_export():
            return self._head(user_half + item_half)  # (B, I)
        # Eager (evaluation): a few users at a time bound the (B, I, H) activations.
        step = max(1, _ACTIVATION_FLOATS // (self.num_items * max(self.config.hidden)))
        parts = [
            self._head(user_half[i : i + step] + item_half) for i in range(0, len(users), step)
        ]
        return torch.cat(parts) if parts else self._head(user_half + item_half)  # (B, I)

    def with_new_items(self, item_features: Tensor) -> MLP:
        """A copy scoring ``num_items + n`` items: the n new ones (features (n, F_i)) get
        indices ``num_items + 1 ..`` and the unknown id embedding, so they rank by features.
        """
        count = item_features.shape[0]
        side = SideInfo(
            self.user_features,
            torch.cat([self.item_features, item_features.to(self.item_features)]),
            self.user_feature_names,
            self.item_feature_names,
        )
        grown = MLP(self.config, self.num_users, self.num_items + count, side)
        state = self.state_dict()
        state["item_features"] = side.item_features
        unknown = state["item_ids.weight"][0].expand(count, -1)  # (n, D)
        state["item_ids.weight"] = torch.cat([state["item_ids.weight"], unknown])
        grown.load_state_dict(state)
        grown.train(self.training)
        return grown

    def item_vectors(self) -> Tensor:
        return self.item_ids.weight[1:].detach()  # (I, D) the id embeddings


def _feature_layer(width: int, out: int) -> nn.Linear | None:
    return nn.Linear(width, out, bias=False) if width > 0 else None
