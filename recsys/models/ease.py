"""EASE: a closed-form linear item-item autoencoder (Steck, WWW 2019)."""

from __future__ import annotations

import logging
import time
import weakref
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from recsys.data.features import SideInfo
from recsys.data.splits import TrainSet
from recsys.models.base import BatchKind, InputKind, Query, Recommender
from recsys.models.space import FloatRange, SearchSpace

logger = logging.getLogger(__name__)

# Closed form: no optimiser. The L2 weight is chosen on validation over ``EASE.lambda_grid``.
TRAIN_DEFAULTS: dict[str, float | int] = {}

# Item columns of the user-item matrix densified at a time while building the Gram matrix,
# fewer when there are many users: a block holds at most _BLOCK_FLOATS floats (256 MB).
_GRAM_CHUNK = 2048
_BLOCK_FLOATS = 1 << 26


@dataclass(frozen=True)
class EASEConfig:
    l2: float = 500.0


# What `recsys tune` varies (recsys.models.space): λ on a continuous log scale. A trial
# fits this one l2 (the config's), never the grid above.
SEARCH_SPACE: SearchSpace = {"l2": FloatRange(1.0, 1e5, log=True)}


class EASE(Recommender):
    """Embarrassingly Shallow Autoencoder: scores = X · B with an item-item matrix B.

    (Here B is the paper's weight matrix; in shape comments B is still the batch.)

    Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019. With X the binary
    user-item matrix of the training events and λ = ``config.l2``,
    ``P = (XᵀX + λI)⁻¹`` and ``B = I - P · diag(1 / diag(P))``, so ``diag(B) = 0``.

    B is stored with a zero padding row, ``(I + 1, I)``. An item that appears twice in a
    history counts once, as in the training matrix X. The exported graph builds the binary row
    of the history (a scatter into ``(B, I + 1)`` zeros) and multiplies it by B: memory stays
    (B, I) for any history length, where gathering B's rows for every position would hold
    (B, L, I) (9.8 GB for an evaluation batch of 1024 x 200 at 12k items). In eager mode the
    same sum is an ``embedding_bag`` over the de-duplicated history, which reads only the
    history's rows: 40x faster than the (B, I) x (I, I) product at 12k items, which matters
    when every λ of the grid is evaluated. The export parity test checks both agree.

    Deviations from the paper: none in the model. Computation is float32 (the paper's code
    uses float64) with a dense LU inverse; XᵀX is cached per training set (see ``fit``).
    """

    input_kinds: ClassVar[tuple[InputKind, ...]] = ("history",)
    batch_kind: ClassVar[BatchKind] = "fit"
    # λ values the training code tries on validation (the paper tunes λ per dataset).
    lambda_grid: ClassVar[tuple[float, ...]] = (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0)

    def __init__(
        self,
        config: EASEConfig,
        num_users: int,
        num_items: int,
        side: SideInfo | None = None,
    ) -> None:
        super().__init__(num_users, num_items)
        self.config = config
        self.set_regularization(config.l2)
        self.weights: Tensor
        # Row 0 is the padding item and stays zero, so padded positions add nothing.
        self.register_buffer("weights", torch.zeros(num_items + 1, num_items))  # (I + 1, I)

    def set_regularization(self, l2: float) -> None:
        """Use ``l2`` from the next ``fit`` on (the config is replaced, so it is saved too)."""
        if l2 <= 0:
            raise ValueError(f"EASE needs l2 > 0 (XᵀX alone is singular), got {l2}")
        self.config = replace(self.config, l2=l2)

    def fit(self, train: TrainSet) -> None:
        """Solve for B with ``config.l2``.

        XᵀX is reused while the same ``train`` object lives, so fitting each λ of
        ``lambda_grid`` (through ``set_regularization`` or one model each) pays for the Gram
        matrix once; each fit still inverts an (I, I) matrix.
        """
        started = time.perf_counter()
        with torch.no_grad():
            system = _GRAM_CACHE.get(train, self.num_users, self.num_items).clone()  # (I, I)
            system.diagonal().add_(self.config.l2)
            precision = torch.linalg.inv(system)  # (I, I)  P, symmetric
            del system
            # B[i, j] = -P[i, j] / P[j, j] off the diagonal, 0 on it.
            diagonal = precision.diagonal().clone()  # (I,)
            precision.div_(-diagonal)
            precision.diagonal().zero_()
            self.weights[0].zero_()
            self.weights[1:].copy_(precision)
        logger.info(
            "EASE fit: %d items, l2=%g, %.1fs",
            self.num_items,
            self.config.l2,
            time.perf_counter() - started,
        )

    def score(self, query: Query) -> Tensor:
        assert query.history is not None, "EASE scores histories"
        history = query.history  # (B, L)
        if torch.onnx.is_in_onnx_export():
            # Exported: a binary row (B, I + 1) times B. Memory (B, I), whatever L is.
            rows = torch.zeros(
                (history.shape[0], self.num_items + 1), dtype=torch.float32, device=history.device
            )  # (B, I + 1)
            rows = rows.scatter(1, history, torch.ones_like(history, dtype=torch.float32))
            return rows @ self.weights  # (B, I)
        # Eager (evaluation): the same sum as a bag of B's rows, reading only the history's
        # rows, after repeats become padding so that each item counts once.
        ordered = history.sort(dim=1).values  # (B, L)
        repeated = torch.zeros_like(ordered, dtype=torch.bool)
        repeated[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
        unique = ordered.masked_fill(repeated, 0)  # (B, L)
        return F.embedding_bag(unique, self.weights, mode="sum", padding_idx=0)  # (B, I)

    def item_vectors(self) -> Tensor:
        # Row i of the item-item weights says how item i raises every other item: (I, I).
        return self.weights[1:].detach()


def gram(train: TrainSet, num_users: int, num_items: int) -> Tensor:
    """XᵀX (I, I) float32 of the binary user-item matrix X of the training events.

    Xᵀ is kept sparse and multiplied by dense column blocks of X, so memory stays at the
    (I, I) result plus one (U, chunk) block whatever the number of events.
    """
    users = train.user_idx.astype(np.int64)
    items = train.item_idx.astype(np.int64) - 1  # column j is item index j + 1
    pairs = np.unique(users * num_items + items)  # repeated events count once
    users, items = pairs // num_items, pairs % num_items  # sorted by user, then item
    rows = num_users + 1
    transposed = torch.sparse_coo_tensor(
        torch.from_numpy(np.stack([items, users])),
        torch.ones(len(pairs), dtype=torch.float32),
        (num_items, rows),
        check_invariants=False,
    ).coalesce()  # (I, U)
    by_item = np.argsort(items, kind="stable")
    items, users = items[by_item], users[by_item]
    chunk = max(64, min(_GRAM_CHUNK, _BLOCK_FLOATS // rows))
    starts = np.arange(0, num_items, chunk)
    bounds = np.searchsorted(items, np.append(starts, num_items))
    out = torch.empty((num_items, num_items), dtype=torch.float32)
    for k, start in enumerate(starts.tolist()):
        stop = min(start + chunk, num_items)
        block = torch.zeros((rows, stop - start), dtype=torch.float32)  # (U, chunk)
        first, last = bounds[k], bounds[k + 1]
        block[torch.from_numpy(users[first:last]), torch.from_numpy(items[first:last] - start)] = 1
        out[:, start:stop] = torch.sparse.mm(transposed, block)
    return out


class _GramCache:
    """Holds XᵀX of the most recent training set until that set is garbage collected.

    Keyed by the identity of the ``TrainSet`` object (it holds numpy arrays, so it has no
    usable hash), which is what repeated fits over a λ grid share.
    """

    def __init__(self) -> None:
        self._source: weakref.ref[TrainSet] | None = None
        self._shape: tuple[int, int] = (0, 0)
        self._gram: Tensor | None = None

    def get(self, train: TrainSet, num_users: int, num_items: int) -> Tensor:
        source = self._source() if self._source is not None else None
        if source is train and self._shape == (num_users, num_items) and self._gram is not None:
            return self._gram
        self.clear()
        result = gram(train, num_users, num_items)
        self._source = weakref.ref(train, self._forget)
        self._shape = (num_users, num_items)
        self._gram = result
        return result

    def clear(self) -> None:
        self._source, self._gram = None, None

    def _forget(self, source: weakref.ref[TrainSet]) -> None:
        if self._source is source:
            self.clear()


_GRAM_CACHE = _GramCache()
