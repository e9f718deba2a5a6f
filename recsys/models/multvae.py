"""Mult-VAE: a variational autoencoder of user rows with a multinomial likelihood (Liang et al.)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.data.features import SideInfo
from recsys.models.base import BatchKind, InputKind, Query, Recommender
from recsys.models.space import OPTIMISER_SPACE, Choice, FloatRange, SearchSpace

# The paper's code: Adam at 1e-3, batches of 500 users, no weight decay on the VAE.
TRAIN_DEFAULTS: dict[str, float | int] = {
    "learning_rate": 1e-3,
    "weight_decay": 0.0,
    "batch_size": 500,
    "max_epochs": 200,
    "patience": 20,
}


@dataclass(frozen=True)
class MultVAEConfig:
    hidden_dim: int = 600
    latent_dim: int = 200
    dropout: float = 0.5
    # β grows linearly from 0 by 1 / total_anneal_steps per training step, capped at beta_max.
    beta_max: float = 0.2
    total_anneal_steps: int = 200_000


# What `recsys tune` varies (recsys.models.space).
SEARCH_SPACE: SearchSpace = {
    "hidden_dim": Choice((300, 600)),
    "latent_dim": Choice((100, 200)),
    "dropout": FloatRange(0.2, 0.7),
    "beta_max": FloatRange(0.05, 0.5),
    **OPTIMISER_SPACE,
    "batch_size": Choice((250, 500)),
}


class MultVAE(Recommender):
    """Encoder [I -> 600 -> 200] to a Gaussian, decoder [200 -> 600 -> I] to item logits.

    Liang, Krishnan, Hoffman & Jebara, "Variational Autoencoders for Collaborative Filtering",
    WWW 2018. The input row is L2-normalised and dropped out (p = 0.5), layers use tanh, the
    loss is the multinomial negative log-likelihood ``-Σ_i x_i log softmax(f(z))_i`` plus β·KL,
    with β annealed linearly to ``beta_max`` over ``total_anneal_steps`` training steps (the
    count is a buffer, so it is saved with the weights). Scoring uses the posterior mean, no
    sampling; the scores are the decoder's logits.

    At score time the binary row is built inside the graph from the left-padded history
    (a scatter into ``(B, I + 1)`` zeros, then column 0, the padding, is dropped).

    Deviations from the paper: β follows the authors' code (linear to the cap, one step per
    ``loss`` call in training mode) rather than the paper's text, which anneals over a full
    0 -> 1 run and keeps the β of the best validation point. Training rows come from the
    shared batcher, which holds each user's full training set (no held-out fold-in users).
    """

    input_kinds: ClassVar[tuple[InputKind, ...]] = ("history",)
    batch_kind: ClassVar[BatchKind] = "rows"

    def __init__(
        self,
        config: MultVAEConfig,
        num_users: int,
        num_items: int,
        side: SideInfo | None = None,
    ) -> None:
        super().__init__(num_users, num_items)
        self.config = config
        self.input_dropout = nn.Dropout(config.dropout)
        self.encoder_hidden = nn.Linear(num_items, config.hidden_dim)
        self.encoder_out = nn.Linear(config.hidden_dim, 2 * config.latent_dim)
        self.decoder_hidden = nn.Linear(config.latent_dim, config.hidden_dim)
        self.decoder_out = nn.Linear(config.hidden_dim, num_items)
        for layer in (self.encoder_hidden, self.encoder_out, self.decoder_hidden, self.decoder_out):
            # The paper's code: Xavier-uniform weights, N(0, 0.001²) biases.
            nn.init.xavier_uniform_(layer.weight)
            nn.init.normal_(layer.bias, std=0.001)
        self.anneal_step: Tensor
        self.register_buffer("anneal_step", torch.zeros((), dtype=torch.int64))

    @property
    def beta(self) -> float:
        """The KL weight of the next training step."""
        steps = max(self.config.total_anneal_steps, 1)
        return min(self.config.beta_max, int(self.anneal_step) / steps)

    def _encode(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance (B, D) of binary rows (B, I)."""
        x = self.input_dropout(F.normalize(rows, dim=1))  # (B, I)
        hidden = torch.tanh(self.encoder_hidden(x))  # (B, H)
        mean, log_var = self.encoder_out(hidden).chunk(2, dim=1)  # (B, D) each
        return mean, log_var

    def _decode(self, z: Tensor) -> Tensor:
        logits: Tensor = self.decoder_out(torch.tanh(self.decoder_hidden(z)))  # (B, I)
        return logits

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        rows = batch["rows"]  # (B, I)
        mean, log_var = self._encode(rows)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * log_var)  # (B, D)
        log_probs = F.log_softmax(self._decode(z), dim=1)  # (B, I)
        nll = -(log_probs * rows).sum(dim=1).mean()
        kl = (-0.5 * (1 + log_var - mean.pow(2) - log_var.exp()).sum(dim=1)).mean()
        beta = self.beta
        if self.training:
            self.anneal_step += 1
        return nll + beta * kl

    def score(self, query: Query) -> Tensor:
        assert query.history is not None, "MultVAE scores histories"
        history = query.history  # (B, L)
        rows = torch.zeros(
            (history.shape[0], self.num_items + 1), dtype=torch.float32, device=history.device
        )  # (B, I + 1)
        rows = rows.scatter(1, history, torch.ones_like(history, dtype=torch.float32))
        mean, _ = self._encode(rows[:, 1:])  # (B, D)
        return self._decode(mean)  # (B, I)

    def item_vectors(self) -> Tensor:
        return self.decoder_out.weight.detach()  # (I, H): each item's output weights
