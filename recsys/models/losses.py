"""Next-item losses of the sequence models over hidden states, chosen by a model's config.

- ``ce``: cross-entropy over ALL items (the full softmax); its (N, I) logits grow with the
  catalogue.
- ``bce``: binary cross-entropy of the true item against ``num_negatives`` (default 1)
  uniform negatives drawn per position (SASRec's original objective).
- ``sampled``: sampled softmax. ``num_negatives`` (default 256) negatives are drawn once per
  batch and shared by every position, so the logits are (N, 1 + K) whatever the catalogue.
  Negatives come uniformly from 1..I or by popularity (training count + 1); popularity-drawn
  negatives get the log-Q correction ``logit - log(q_j)``, q_j the chance to draw item j. A
  negative equal to a position's target is masked out of that position's softmax.
  ``mixed`` adds the batch's own targets (each once) to ``num_negatives`` uniform ones: mixed
  negative sampling (Yang et al., "Mixed Negative Sampling for Learning Two-tower Neural
  Networks in Recommendations", WWW 2020). The targets are hard negatives drawn by
  popularity for free; every negative's logit is corrected by the log of its expected count
  in the set, ``K / I + 1 - (1 - p_j)^N`` for N positions and training popularity p_j. The
  logits are (N, 1 + K + U) with U <= N distinct targets: they grow with the batch, never
  with the catalogue.
- ``gbce``: gSASRec's generalised BCE (Petrov & Macdonald, RecSys 2023) on the same shared
  uniform negatives: the positive's log-sigmoid is raised to the power
  ``beta = alpha * (t * (1 - 1/alpha) + 1/alpha)``, alpha = K / (I - 1), which undoes the
  overconfidence that sampling negatives gives BCE; ``t`` = 1 is fully calibrated, 0 is BCE.

The BCE losses (``bce`` and ``gbce``) add ``-log(K)`` to every logit they score
(:func:`base_rate_offset`): one positive among 1 + K candidates starts at its base rate. The
same constant on every item changes no ranking, so scoring and export never see it. Without it
a model starts with logits near 0, where the K negatives' push (sigmoid 0.5 each) outweighs
the positive's K-fold, and every hidden state collapses to one vector that scores all items
alike: on Amazon Toys at K = 256, gbce stayed at validation NDCG@10 0.002 and stopped on
patience, and bce waited seven epochs before it moved (benchmarks/README.md).

Every loss is a mean over the positions with a target (``target > 0``). Random draws use
torch's generator on the hidden states' device, so runs are seeded by ``torch.manual_seed``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.data.splits import TrainSet
from recsys.errors import RecsysError

LossKind = Literal["ce", "bce", "sampled", "gbce"]
Sampler = Literal["uniform", "popularity", "mixed"]
# Negatives when ``num_negatives`` is not set: one per position for bce, as in the SASRec
# paper; 256 shared per batch for sampled and gbce (gSASRec's setting).
DEFAULT_NEGATIVES = {"bce": 1, "sampled": 256, "gbce": 256}
# gSASRec's calibration parameter for 256 negatives.
DEFAULT_GBCE_T = 0.75


@dataclass(frozen=True)
class LossSpec:
    """The loss fields a sequence model's config carries (see the module docstring)."""

    kind: LossKind = "ce"
    num_negatives: int | None = None
    sampler: Sampler = "uniform"
    gbce_t: float = DEFAULT_GBCE_T

    @classmethod
    def of(cls, config: Any) -> LossSpec:
        """The loss of a model config with ``loss``, ``num_negatives``, ``sampler``, ``gbce_t``."""
        return cls(config.loss, config.num_negatives, config.sampler, config.gbce_t)

    def negatives(self) -> int:
        return self.num_negatives or DEFAULT_NEGATIVES.get(self.kind, 0)

    def check(self, num_items: int) -> None:
        if self.kind not in ("ce", "bce", "sampled", "gbce"):
            raise RecsysError(f"unknown loss {self.kind!r}: use ce, bce, sampled or gbce")
        if self.sampler not in ("uniform", "popularity", "mixed"):
            raise RecsysError(f"unknown sampler {self.sampler!r}: use uniform, popularity or mixed")
        if self.num_negatives is not None and self.num_negatives < 1:
            raise RecsysError(f"num_negatives must be at least 1, got {self.num_negatives}")
        if self.sampler != "uniform" and self.kind != "sampled":
            raise RecsysError(
                f"sampler={self.sampler} is for loss=sampled (its log-Q correction); "
                f"loss={self.kind} draws uniform negatives"
            )
        if self.kind == "gbce" and not 0.0 <= self.gbce_t <= 1.0:
            raise RecsysError(f"gbce_t must be within [0, 1], got {self.gbce_t}")
        if self.kind == "gbce" and num_items < 2:
            raise RecsysError("loss=gbce needs at least two items")


class NextItemLoss(nn.Module):
    """The loss of a sequence model: ``loss(hidden, target, item_weight, item_bias)``.

    Holds the popularity sampler's tables as non-persistent buffers: they follow the model
    to its device but are not weights (not in ``state_dict``, never exported).
    """

    def __init__(self, spec: LossSpec, num_items: int) -> None:
        super().__init__()
        spec.check(num_items)
        self.spec = spec
        self.num_items = num_items
        self.num_negatives = spec.negatives()
        self.cdf: Tensor
        self.log_q: Tensor
        self.q: Tensor
        self.register_buffer("cdf", torch.zeros(0, dtype=torch.float64), persistent=False)
        self.register_buffer("log_q", torch.zeros(0), persistent=False)
        self.register_buffer("q", torch.zeros(0, dtype=torch.float64), persistent=False)

    def set_popularity(self, counts: Tensor) -> None:
        """Draw negatives in proportion to ``counts + 1`` (I,), the items' training counts."""
        weights = counts.to(torch.float64).flatten() + 1.0
        if weights.shape != (self.num_items,):
            raise ValueError(f"popularity needs {self.num_items} counts, got {counts.shape}")
        q = weights / weights.sum()
        device = self.log_q.device
        self.cdf = torch.cumsum(q, 0).to(device)
        self.log_q = torch.log(q).to(torch.float32).to(device)
        self.q = q.to(device)

    def prepare(self, train: TrainSet) -> None:
        """Popularity tables from the training events, for the popularity and mixed samplers."""
        if self.spec.sampler in ("popularity", "mixed"):
            counts = np.bincount(train.item_idx, minlength=self.num_items + 1)[1:]
            self.set_popularity(torch.from_numpy(counts[: self.num_items]))

    def draw(self, device: torch.device) -> Tensor:
        """This batch's shared negatives (K,), item indices in 1..I."""
        k = self.num_negatives
        if self.spec.sampler == "popularity":
            if self.cdf.numel() != self.num_items:
                raise RuntimeError("popularity sampling needs prepare() or set_popularity()")
            u = torch.rand(k, dtype=torch.float64, device=device)
            picked = torch.searchsorted(self.cdf, u, right=True)
            return picked.clamp(max=self.num_items - 1) + 1
        return torch.randint(1, self.num_items + 1, (k,), device=device)

    def with_targets(self, uniform: Tensor, positives: Tensor) -> tuple[Tensor, Tensor]:
        """The mixed sampler's negatives: ``uniform`` (K,) and the distinct ``positives``,
        with the log of each one's expected count in that set (see the module docstring)."""
        if self.q.numel() != self.num_items:
            raise RuntimeError("the mixed sampler needs prepare() or set_popularity()")
        targets = torch.unique(positives)  # (U,)
        negatives = torch.cat([uniform, targets])
        p = self.q[negatives - 1]
        in_batch = -torch.expm1(len(positives) * torch.log1p(-p))  # 1 - (1 - p)^N
        expected = len(uniform) / self.num_items + in_batch
        return negatives, torch.log(expected).to(torch.float32)

    def forward(
        self,
        hidden: Tensor,
        target: Tensor,
        item_weight: Tensor,
        item_bias: Tensor | None = None,
    ) -> Tensor:
        """Mean loss over the positions with a target.

        ``hidden`` (..., D), ``target`` (...) item indices with 0 = no target, ``item_weight``
        (I + 1, D) with row 0 padding, optional ``item_bias`` (I + 1,).
        """
        kind = self.spec.kind
        if kind == "ce":
            return full_softmax_loss(hidden, target, item_weight, item_bias)
        if kind == "bce":
            return sampled_bce_loss(
                hidden, target, item_weight, self.num_items, item_bias, self.num_negatives
            )
        keep = target > 0
        if not bool(keep.any()):
            return _no_targets(hidden)
        negatives = self.draw(hidden.device)  # (K,)
        states, positives = hidden[keep], target[keep]  # (N, D), (N,)
        if kind == "sampled":
            log_q = None
            if self.spec.sampler == "popularity":
                log_q = self.log_q[negatives - 1]
            elif self.spec.sampler == "mixed":
                negatives, log_q = self.with_targets(negatives, positives)
            return sampled_softmax_loss(states, positives, negatives, item_weight, item_bias, log_q)
        return gbce_loss(
            states, positives, negatives, item_weight, self.num_items, self.spec.gbce_t, item_bias
        )


def _no_targets(hidden: Tensor) -> Tensor:
    # A batch without any target still needs a differentiable zero, not mean() of nothing (NaN).
    return hidden.sum() * 0.0


def full_softmax_loss(
    hidden: Tensor, target: Tensor, item_weight: Tensor, item_bias: Tensor | None = None
) -> Tensor:
    """Mean cross-entropy of the next item over ALL items, at every non-padding position.

    ``hidden`` (B, L, D), ``target`` (B, L) item indices with 0 = no target (any leading
    shape works, e.g. (N, D) and (N,)), ``item_weight``
    (I + 1, D) with row 0 padding (never a class), optional ``item_bias`` (I + 1,). Only the
    N positions with a target are gathered before the (N, D) @ (D, I) product: on left-padded
    batches of short histories this is most of the cost of a training step.
    """
    keep = target > 0  # (B, L)
    if not bool(keep.any()):
        return _no_targets(hidden)
    states = hidden[keep]  # (N, D)
    bias = None if item_bias is None else item_bias[1:]
    if torch.is_autocast_enabled(states.device.type):  # bf16 logits, fp32 softmax: torch's
        logits = states @ item_weight[1:].T  # (N, I)
        if bias is not None:
            logits = logits + bias
        return F.cross_entropy(logits, target[keep] - 1)
    loss: Tensor = _LinearCrossEntropy.apply(  # type: ignore[no-untyped-call]
        states, item_weight[1:], target[keep] - 1, bias
    )
    return loss


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``states @ weight.T (+ bias)`` against ``target``, fused.

    ``F.cross_entropy`` over the (N, I) logits keeps the logits, their log-softmax, a zeroed
    gradient of the log-softmax and the logits' gradient: four (N, I) tensors, each written and
    read in full, which on a CPU cost more than the product itself (benchmarks/README.md). Here
    one (N, I) buffer holds the logits, then in place the softmax, then the logits' gradient
    ``(softmax - onehot) / N``, which is all the backward pass needs.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, states: Tensor, weight: Tensor, target: Tensor, bias: Tensor | None
    ) -> Tensor:
        n = states.shape[0]
        logits = states @ weight.T  # (N, I)
        if bias is not None:
            logits += bias
        logits -= logits.amax(dim=1, keepdim=True)
        picked = logits.gather(1, target[:, None]).squeeze(1)  # (N,)
        logits.exp_()
        total = logits.sum(dim=1)  # (N,)
        loss = (total.log() - picked).mean()
        grad = logits.div_(total[:, None] * n)  # softmax / N, in place
        grad[torch.arange(n, device=grad.device), target] -= 1.0 / n
        ctx.save_for_backward(states, weight, grad)
        ctx.has_bias = bias is not None
        return loss

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, upstream: Tensor
    ) -> tuple[Tensor | None, Tensor | None, None, Tensor | None]:
        states, weight, grad = ctx.saved_tensors
        grad_states = grad @ weight * upstream if ctx.needs_input_grad[0] else None
        grad_weight = grad.T @ states * upstream if ctx.needs_input_grad[1] else None
        grad_bias = grad.sum(dim=0) * upstream if ctx.has_bias and ctx.needs_input_grad[3] else None
        return grad_states, grad_weight, None, grad_bias


def sampled_bce_loss(
    hidden: Tensor,
    target: Tensor,
    item_weight: Tensor,
    num_items: int,
    item_bias: Tensor | None = None,
    num_negatives: int = 1,
) -> Tensor:
    """Binary cross-entropy of the true next item against uniformly sampled negatives.

    One positive and ``num_negatives`` negatives per non-padding position (SASRec's original
    objective). Negatives are drawn uniformly from 1..I and may occasionally hit an item of
    the sequence; the paper resamples those, which matters little for large catalogues.
    """
    keep = target > 0  # (B, L)
    if not bool(keep.any()):
        return _no_targets(hidden)
    states = hidden[keep]  # (N, D)
    positives = target[keep]  # (N,)
    negatives = torch.randint(
        1, num_items + 1, (positives.shape[0], num_negatives), device=target.device
    )  # (N, K)
    offset = base_rate_offset(num_negatives)
    pos_logits = (states * item_weight[positives]).sum(-1) + offset  # (N,)
    neg_logits = (states.unsqueeze(1) * item_weight[negatives]).sum(-1) + offset  # (N, K)
    if item_bias is not None:
        pos_logits = pos_logits + item_bias[positives]
        neg_logits = neg_logits + item_bias[negatives]
    pos_loss = F.binary_cross_entropy_with_logits(pos_logits, torch.ones_like(pos_logits))
    neg_loss = F.binary_cross_entropy_with_logits(
        neg_logits, torch.zeros_like(neg_logits), reduction="none"
    ).sum(-1)
    return pos_loss + neg_loss.mean()


def _pair_logits(
    states: Tensor,
    positives: Tensor,
    negatives: Tensor,
    item_weight: Tensor,
    item_bias: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Logits of each position's target (N,) and of the shared negatives (N, K).

    One embedding lookup of the N + K rows: its backward allocates the dense (I + 1, D)
    gradient once (indexing allocates it twice, and once more per extra gather).
    """
    n = len(positives)
    items = torch.cat([positives, negatives])  # (N + K,)
    rows = F.embedding(items, item_weight)  # (N + K, D)
    pos_logits = (states * rows[:n]).sum(-1)  # (N,)
    neg_logits = states @ rows[n:].T  # (N, K)
    if item_bias is not None:
        bias = item_bias[items]  # (N + K,)
        pos_logits = pos_logits + bias[:n]
        neg_logits = neg_logits + bias[n:]
    return pos_logits.float(), neg_logits.float()


def sampled_softmax_loss(
    states: Tensor,
    positives: Tensor,
    negatives: Tensor,
    item_weight: Tensor,
    item_bias: Tensor | None = None,
    log_q: Tensor | None = None,
) -> Tensor:
    """Mean cross-entropy of each target against the shared negatives: (N, 1 + K) logits.

    ``states`` (N, D), ``positives`` (N,) and ``negatives`` (K,) item indices in 1..I,
    ``log_q`` (K,) the log-probability each negative had to be drawn (popularity sampling)
    or None. A negative equal to a row's target is masked out of that row.
    """
    pos_logits, neg_logits = _pair_logits(states, positives, negatives, item_weight, item_bias)
    if log_q is not None:
        neg_logits = neg_logits - log_q.float()
    collide = negatives.unsqueeze(0) == positives.unsqueeze(1)  # (N, K)
    neg_logits = neg_logits.masked_fill(collide, float("-inf"))
    logits = torch.cat([pos_logits.unsqueeze(1), neg_logits], dim=1)  # (N, 1 + K)
    return torch.logsumexp(logits, dim=1).sub(pos_logits).mean()


def base_rate_offset(num_negatives: int) -> float:
    """What the BCE losses add to every logit: ``-log(K)``, so that a model's first scores
    put one positive among 1 + K candidates near its base rate (0 for SASRec's one negative)."""
    return -math.log(num_negatives)


def gbce_beta(num_negatives: int, num_items: int, t: float) -> float:
    """gSASRec's beta for K negatives out of I items at calibration ``t``."""
    alpha = num_negatives / (num_items - 1)
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


def gbce_loss(
    states: Tensor,
    positives: Tensor,
    negatives: Tensor,
    item_weight: Tensor,
    num_items: int,
    t: float,
    item_bias: Tensor | None = None,
) -> Tensor:
    """gBCE per position: ``-(beta * log sigmoid(s+) + sum_k log(1 - sigmoid(s_k))) / (1 + K)``.

    The mean over the 1 + K terms of a position follows gSASRec's code; a negative equal to
    the row's target is left out (its term is zero). Every logit is shifted by
    :func:`base_rate_offset` first.
    """
    pos_logits, neg_logits = _pair_logits(states, positives, negatives, item_weight, item_bias)
    offset = base_rate_offset(len(negatives))
    pos_logits, neg_logits = pos_logits + offset, neg_logits + offset
    beta = gbce_beta(len(negatives), num_items, t)
    collide = negatives.unsqueeze(0) == positives.unsqueeze(1)  # (N, K)
    neg_terms = F.softplus(neg_logits).masked_fill(collide, 0.0).sum(1)  # -log(1 - sigmoid)
    per_position = -beta * F.logsigmoid(pos_logits) + neg_terms
    return (per_position / (1 + len(negatives))).mean()
