"""NeuMF: generalised matrix factorisation fused with an MLP tower (He et al., WWW 2017)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.data.features import SideInfo
from recsys.models.base import BatchKind, InputKind, Query, Recommender
from recsys.models.space import OPTIMISER_SPACE, Choice, SearchSpace

# The paper: Adam at 1e-3, batches of 256, four sampled negatives per positive.
TRAIN_DEFAULTS: dict[str, float | int] = {
    "learning_rate": 1e-3,
    "weight_decay": 0.0,
    "batch_size": 256,
    "max_epochs": 50,
    "patience": 5,
    "num_negatives": 4,
}


# Largest (users, I, H) activation built at a time when scoring in eager mode (128 MB).
_ACTIVATION_FLOATS = 1 << 25


@dataclass(frozen=True)
class NeuMFConfig:
    gmf_dim: int = 16
    # Per side: the MLP tower reads the concatenation of two of these (user, item).
    mlp_embedding_dim: int = 32
    # Hidden sizes of the MLP tower; each ReLU layer halves in the paper's towers.
    mlp_hidden: tuple[int, ...] = (32, 16)


# What `recsys tune` varies (recsys.models.space).
SEARCH_SPACE: SearchSpace = {
    "gmf_dim": Choice((8, 16, 32)),
    "mlp_embedding_dim": Choice((16, 32, 64)),
    **OPTIMISER_SPACE,
    "batch_size": Choice((128, 256, 512)),
}


class NeuMF(Recommender):
    """Neural matrix factorisation: ``sigmoid(hᵀ [p_u ⊙ q_i ; MLP([p'_u ; q'_i])])``.

    He, Liao, Zhang, Nie, Hu & Chua, "Neural Collaborative Filtering", WWW 2017. The GMF and
    MLP towers have their own user and item embeddings; their last layers are concatenated
    and mapped to one logit. Trained pointwise with binary cross-entropy: each positive
    against the batch's sampled negatives.

    Scoring all items never builds the (B, I, 2D) concatenation: the first MLP layer is
    linear, ``W [p'_u ; q'_i] = W_u p'_u + W_i q'_i``, so a (B, 1, H) user half and a
    (1, I, H) item half are added before the ReLU. The GMF part is one matmul. In eager mode
    (evaluation) users are scored in chunks so the (B, I, H) activations stay near 128 MB;
    the exported graph scores its whole batch at once. ``score`` returns logits (the sigmoid
    is monotonic, so rankings are the same).

    Deviations from the paper:

    - No pretraining: GMF and MLP are trained jointly from random initialisation rather
      than initialised from separately trained GMF and MLP models (the paper's NeuMF with
      pretraining, fused with alpha = 0.5).
    - Negatives are drawn uniformly from all items by the shared batcher and may hit an item
      the user interacted with; the paper samples among non-interacted items.
    - The loss is the mean binary cross-entropy over positives and negatives of a batch.
    """

    input_kinds: ClassVar[tuple[InputKind, ...]] = ("user",)
    batch_kind: ClassVar[BatchKind] = "pairs"

    def __init__(
        self,
        config: NeuMFConfig,
        num_users: int,
        num_items: int,
        side: SideInfo | None = None,
    ) -> None:
        super().__init__(num_users, num_items)
        self.config = config
        self.gmf_users = _embedding(num_users, config.gmf_dim)
        self.gmf_items = _embedding(num_items, config.gmf_dim)
        self.mlp_users = _embedding(num_users, config.mlp_embedding_dim)
        self.mlp_items = _embedding(num_items, config.mlp_embedding_dim)
        first, *rest = config.mlp_hidden
        # The first MLP layer on [p'_u ; q'_i], split into its user and item columns.
        self.first_user = nn.Linear(config.mlp_embedding_dim, first)
        self.first_item = nn.Linear(config.mlp_embedding_dim, first, bias=False)
        sizes = [first, *rest]
        self.tower = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.predict_gmf = nn.Linear(config.gmf_dim, 1)
        self.predict_mlp = nn.Linear(sizes[-1], 1, bias=False)

    def _logits(self, users: Tensor, items: Tensor | None) -> Tensor:
        """Logits (B, K) of users (B,) for items (B, K), or for all items (B, I) if None."""
        # GMF: hᵀ(p ⊙ q) = (p ⊙ h) · q.
        gmf_user = self.gmf_users(users) * self.predict_gmf.weight  # (B, G)
        if items is None:
            gmf = gmf_user @ self.gmf_items.weight[1:].T  # (B, I)
            mlp_items = self.mlp_items.weight[1:].unsqueeze(0)  # (1, I, E)
        else:
            gmf = (self.gmf_items(items) * gmf_user.unsqueeze(1)).sum(-1)  # (B, K)
            mlp_items = self.mlp_items(items)  # (B, K, E)
        user_half = self.first_user(self.mlp_users(users)).unsqueeze(1)  # (B, 1, H)
        hidden = F.relu(user_half + self.first_item(mlp_items))  # (B, K, H)
        for layer in self.tower:
            hidden = F.relu(layer(hidden))  # (B, K, H')
        mlp = self.predict_mlp(hidden).squeeze(-1)  # (B, K)
        logits: Tensor = gmf + mlp + self.predict_gmf.bias
        return logits

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        items = torch.cat([batch["item"].unsqueeze(1), batch["negatives"]], dim=1)  # (B, 1 + N)
        logits = self._logits(batch["user"], items)  # (B, 1 + N)
        labels = torch.zeros_like(logits)
        labels[:, 0] = 1.0
        return F.binary_cross_entropy_with_logits(logits, labels)

    def score(self, query: Query) -> Tensor:
        assert query.user is not None, "NeuMF scores users"
        users = query.user  # (B,)
        if torch.onnx.is_in_onnx_export():
            return self._logits(users, None)  # (B, I)
        # Eager (evaluation): a few users at a time bound the (B, I, H) activations.
        width = max(self.config.mlp_hidden)
        step = max(1, _ACTIVATION_FLOATS // (self.num_items * width))
        parts = [self._logits(users[i : i + step], None) for i in range(0, len(users), step)]
        return torch.cat(parts) if parts else self._logits(users, None)  # (B, I)

    def item_vectors(self) -> Tensor:
        weights = (self.gmf_items.weight[1:], self.mlp_items.weight[1:])
        return torch.cat(weights, dim=1).detach()  # (I, D_gmf + D_mlp)


def _embedding(rows: int, dim: int) -> nn.Embedding:
    """``rows + 1`` rows, row 0 padding; N(0, 0.01²) as in the paper's code."""
    embedding = nn.Embedding(rows + 1, dim, padding_idx=0)
    nn.init.normal_(embedding.weight, std=0.01)
    with torch.no_grad():
        embedding.weight[0].zero_()
    return embedding
