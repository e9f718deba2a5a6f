"""The Recommender interface every model implements, and the query it scores.

A model is an ``nn.Module`` built from a frozen config dataclass plus ``num_users`` and
``num_items``. It gives a training loss for a batch and ``score(query) -> (B, I)``: scores of
all items, column ``j`` belonging to item index ``j + 1`` (index 0 is padding and never
scored). ``score`` is exactly what gets exported to ONNX.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from recsys.devices import device_of

if TYPE_CHECKING:
    from recsys.data.splits import TrainSet

InputKind = Literal["history", "user"]
# How the shared training loop feeds a model (see recsys.data.batches):
#   "sequence": all-position next-item batches {"history": (B, L), "target": (B, L)}
#   "pairs":    {"user": (B,), "item": (B,), "negatives": (B, N)} with sampled negatives
#   "rows":     {"user": (B,), "rows": (B, I)} multi-hot rows of the user-item matrix
#   "fit":      no batches; the model computes itself from the whole training set (``fit``)
BatchKind = Literal["sequence", "pairs", "rows", "fit"]


@dataclass(frozen=True)
class Query:
    """What a model scores: item histories (most recent last, left-padded with 0) and users."""

    history: Tensor | None = None  # (B, L) int64
    user: Tensor | None = None  # (B,) int64

    @property
    def batch_size(self) -> int:
        tensor = self.history if self.history is not None else self.user
        assert tensor is not None, "a query needs a history or users"
        return int(tensor.shape[0])


class Recommender(nn.Module):
    """Base of every model; subclasses set the class attributes and implement the methods."""

    input_kinds: ClassVar[tuple[InputKind, ...]] = ("history",)
    batch_kind: ClassVar[BatchKind] = "sequence"
    # Longest history the model reads (sequence models); None means any length.
    max_len: int | None = None
    # True when left padding does not change a history's scores (padding is masked out and
    # positions count from the most recent item): evaluation may then drop all-padding columns.
    padding_invariant: ClassVar[bool] = False
    # True when the model reads user/item side features (``SideInfo``) at construction:
    # training then builds them from the catalogue.
    uses_side_features: ClassVar[bool] = False
    # True for the popularity baseline itself, which the promotion gate cannot compare with
    # popularity (an empty registry's first champion must beat popularity).
    is_popularity_baseline: ClassVar[bool] = False

    def __init__(self, num_users: int, num_items: int) -> None:
        super().__init__()
        self.num_users = num_users
        self.num_items = num_items

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        """Scalar training loss of one batch (of this model's ``batch_kind``)."""
        raise NotImplementedError(f"{type(self).__name__} is fitted, not trained by batches")

    def prepare_training(self, train: TrainSet) -> None:
        """Take what the loss needs from the training set, before the first batch.

        Called by the training loop on the CPU; e.g. item popularity for popularity-sampled
        negatives. Nothing by default.
        """

    def fit(self, train: Any) -> None:
        """Closed-form or counting models compute themselves from a ``TrainSet`` here."""
        raise NotImplementedError(f"{type(self).__name__} trains by batches")

    def score(self, query: Query) -> Tensor:
        """Scores of all items, (B, I); higher is better."""
        raise NotImplementedError

    def output_vectors(self) -> Tensor | None:
        """The item table (I, D) that ``score`` takes inner products with, or None.

        A model that gives one also gives :meth:`encode`, with ``score(query) ==
        encode(query) @ output_vectors().T``: a large catalogue is then served through a
        nearest-neighbour index over these vectors instead of scoring every item.
        """
        return None

    def encode(self, query: Query) -> Tensor:
        """User vectors (B, D): ``score`` without its final product with ``output_vectors``."""
        raise NotImplementedError(f"{type(self).__name__} scores are not a product with items")

    def item_vectors(self) -> Tensor | None:
        """Item representations (I, D), row ``j`` for item index ``j + 1``, or None.

        Used for similar items and explanations (cosine similarity); not part of scoring.
        """
        return None

    def example_query(self, batch_size: int = 2, length: int | None = None) -> Query:
        """A small valid query for export and tests."""
        length = length or min(self.max_len or 8, 8)
        generator = torch.Generator().manual_seed(0)
        history = torch.randint(1, self.num_items + 1, (batch_size, length), generator=generator)
        history[:, 0] = 0  # keep a padding slot, as real left-padded histories have
        user = torch.randint(1, self.num_users + 1, (batch_size,), generator=generator)
        return Query(
            history=history if "history" in self.input_kinds else None,
            user=user if "user" in self.input_kinds else None,
        )


ScoreFn = Any  # Callable[[np.ndarray (B, L) int64, np.ndarray (B,) int64], np.ndarray (B, I)]


def torch_scorer(model: Recommender, chunk: int = 256) -> ScoreFn:
    """Wrap a model as the numpy scoring callable evaluation uses (eval mode, no grad).

    Scores are computed where the model is (its parameters' device), ``chunk`` rows at a
    time, and come back as float32 numpy arrays: on a GPU only a (chunk, I) block of scores
    is ever on the device. For a ``padding_invariant`` model the rows are grouped by history
    length (``length_groups_of``), each chunk cut to its longest history: the same scores for
    much less work when a few long histories would otherwise pad the rows beside them.
    """
    import numpy as np

    from recsys.data.batches import length_groups_of

    def run(history: np.ndarray, users: np.ndarray, device: torch.device) -> np.ndarray:
        query = Query(
            history=torch.from_numpy(history).to(device)
            if "history" in model.input_kinds
            else None,
            user=torch.from_numpy(users).to(device) if "user" in model.input_kinds else None,
        )
        return model.score(query).float().cpu().numpy()

    def score(history: np.ndarray, users: np.ndarray) -> np.ndarray:
        model.eval()
        device = device_of(model)
        with torch.inference_mode():
            if history.ndim != 2:
                return run(history, users, device)
            used = (history > 0).sum(axis=1)  # (B,)
            invariant = model.padding_invariant
            # Rows grouped by length, each chunk cut to its longest; else rows in order.
            chunks = (
                length_groups_of(used, max_rows=chunk)
                if invariant
                else [
                    np.arange(start, min(start + chunk, len(history)))
                    for start in range(0, len(history), chunk)
                ]
            )
            out = np.empty((len(history), model.num_items), dtype=np.float32)
            for rows in chunks:
                width = max(int(used[rows].max()), 1) if invariant else history.shape[1]
                out[rows] = run(
                    np.ascontiguousarray(history[rows, history.shape[1] - width :]),
                    np.ascontiguousarray(users[rows]),
                    device,
                )
            return out

    return score
