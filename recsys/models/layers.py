"""Shared building blocks of the sequence models: item embeddings and a causal pre-LN
transformer block written with plain matmuls (ONNX-friendly). Their losses: models/losses.py.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import torch
from torch import Tensor, nn

from recsys.data.batches import GROUP_OVERHEAD_POSITIONS, length_groups_of

# Training settings the sequence models share. On Amazon Toys (19k users, 12k items,
# max_len 50) validation NDCG@10 peaks after 8-16 epochs at this rate (10-14 s each on 2
# cores); 1e-3 was still climbing after 11 epochs.
SEQUENCE_TRAIN_DEFAULTS: dict[str, float | int] = {
    "learning_rate": 3e-3,
    "weight_decay": 0.0,
    "batch_size": 128,
    "max_epochs": 50,
    "patience": 5,
}

# Added to attention logits of forbidden keys. Finite (not -inf) so a query whose keys are all
# forbidden (a padding position) gets a finite, ignored row instead of NaN; exp() of it
# underflows to exactly 0 in float32, so allowed keys see no leak.
MASK_VALUE = -1e9


# Of the 8 bytes of a random int64 (63 random bits), the 7 that are uniform.
_UNIFORM_BYTES = slice(0, 7) if sys.byteorder == "little" else slice(1, 8)


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose CPU masks come from random bytes, 7 per draw of the generator.

    On a CPU, torch's dropout draws one Bernoulli sample per element, and on these models that
    was the largest cost of a training step after the matrix products (24% of a SASRec step at
    D = 128 on Amazon Toys; benchmarks/README.md). Here each element is dropped when its random
    byte is below ``round(p * 256)``, so ``p`` is applied to the nearest 1/256 (0.2 acts as
    0.1992), and kept elements are scaled by the exact inverse of that keep rate. Seeded by
    ``torch.manual_seed`` like every other draw; identity in eval mode; on other devices, and
    for p = 0, it is ``nn.Dropout``.
    """

    def forward(self, input: Tensor) -> Tensor:
        if not self.training or self.p == 0.0 or input.device.type != "cpu":
            return super().forward(input)
        drop = round(self.p * 256)
        if drop >= 256:
            return input * 0.0
        n = input.numel()
        words = torch.empty((n + 6) // 7, dtype=torch.int64).random_()  # 63 random bits each
        noise = words.view(torch.uint8).view(-1, 8)[:, _UNIFORM_BYTES].reshape(-1)[:n]
        scale = (noise.view(input.shape) >= drop).to(input.dtype) * (256.0 / (256 - drop))
        return input * scale


def item_embedding(num_items: int, dim: int) -> nn.Embedding:
    """Embedding of ``num_items + 1`` rows; row 0 is padding (zero, never updated)."""
    embedding = nn.Embedding(num_items + 1, dim, padding_idx=0)
    nn.init.normal_(embedding.weight, std=dim**-0.5)
    with torch.no_grad():
        embedding.weight[0].zero_()
    return embedding


def attention_mask(history: Tensor) -> Tensor:
    """Additive float mask (B, 1, L, L): 0 where query t may read key s (s <= t, s not padding).

    Built from comparisons of ``arange`` rather than ``triu`` so every op exports at opset 17.
    """
    length = history.shape[1]
    positions = torch.arange(length, device=history.device)
    future = positions.unsqueeze(0) > positions.unsqueeze(1)  # (L, L), [t, s] = s > t
    padding = (history == 0).unsqueeze(1).unsqueeze(2)  # (B, 1, 1, L)
    forbidden = future.unsqueeze(0).unsqueeze(0) | padding  # (B, 1, L, L)
    zeros = torch.zeros(forbidden.shape, dtype=torch.float32, device=history.device)
    return zeros.masked_fill(forbidden, MASK_VALUE)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with an additive mask, written with matmul + softmax.

    Hand-written instead of ``nn.MultiheadAttention`` so the eval fast path and its nested
    tensors never enter the traced ONNX graph.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        batch, length, dim = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, D/H)
        logits = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim) + mask  # (B, H, L, L)
        weights = self.dropout(torch.softmax(logits, dim=-1))
        attended = (weights @ v).transpose(1, 2).reshape(batch, length, dim)  # (B, L, D)
        out: Tensor = self.out(attended)
        return out


class TransformerBlock(nn.Module):
    """Pre-LN block: ``x + attn(LN(x))`` then ``x + ffn(LN(x))``, with a point-wise ReLU FFN."""

    def __init__(self, dim: int, num_heads: int, dropout: float, ffn_dim: int | None = None):
        super().__init__()
        ffn_dim = ffn_dim or dim
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = CausalSelfAttention(dim, num_heads, dropout)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim),
            nn.ReLU(),
            Dropout(dropout),
            nn.Linear(ffn_dim, dim),
        )
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + self.dropout(self.attention(self.attention_norm(x), mask))
        x = x + self.dropout(self.ffn(self.ffn_norm(x)))
        return x  # (B, L, D)


def trim_left_padding(history: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Drop the leading columns that are padding in every row of a training batch.

    Batches are padded to ``max_len`` but most histories are much shorter; causal models whose
    outputs do not depend on extra left padding lose nothing by skipping those columns. Only
    for training: the slice depends on the data, so it must stay out of exported graphs.
    """
    used = (history > 0).any(dim=0)  # (L,)
    first = int(used.to(torch.int64).argmax()) if bool(used.any()) else history.shape[1] - 1
    return history[:, first:], target[:, first:]


def length_groups(
    history: Tensor, target: Tensor, overhead: int = GROUP_OVERHEAD_POSITIONS
) -> list[tuple[Tensor, Tensor]]:
    """Split a left-padded training batch into groups of rows of similar length, each trimmed.

    One long history pads every row of its batch to its length: on Amazon Toys at
    ``max_len`` 200, a third of the positions an epoch encodes hold an item. Rows are
    independent in a causal model whose outputs do not depend on extra left padding, so
    encoding them in groups (``length_groups_of``) and pooling the target positions gives the
    same loss and gradients. On Amazon Toys: 1.2 groups per batch, 54% fewer encoded positions
    at ``max_len`` 200 and 27% fewer at 50.
    """
    lengths = (history > 0).sum(dim=1).cpu().numpy()  # (B,) on the host, wherever the batch is
    groups = [
        torch.from_numpy(rows).to(history.device) for rows in length_groups_of(lengths, overhead)
    ]
    return [trim_left_padding(history[rows], target[rows]) for rows in groups]


def grouped_states(
    encode: Callable[[Tensor], Tensor],
    history: Tensor,
    target: Tensor,
    overhead: int = GROUP_OVERHEAD_POSITIONS,
) -> tuple[Tensor, Tensor]:
    """Hidden states (N, D) at the target positions of a batch, and their targets (N,).

    ``encode`` maps a left-padded history (B, L) to hidden states (B, L, D); it runs once per
    group of ``length_groups``.
    """
    states, targets = [], []
    for part_history, part_target in length_groups(history, target, overhead):
        hidden = encode(part_history)  # (b, l, D)
        keep = part_target > 0
        states.append(hidden[keep])
        targets.append(part_target[keep])
    return torch.cat(states), torch.cat(targets)
