"""Side features: catalogue attributes of users and items as dense float32 matrices.

Row ``idx`` of a matrix describes user/item index ``idx``; row 0 is padding (all zero).
Statistics (means, vocabularies) come from the catalogue; popularity counts training events
only, never validation or test targets. ``SideInfo`` is what a model that reads side features
is built with; this module never touches the database (``recsys.data.catalogue`` reads it).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from recsys.data.splits import TrainSet
from recsys.errors import RecsysError

TOP_OCCUPATIONS = 20
TOP_GENRES = 30

FloatArray = npt.NDArray[np.float32]
# What recsys.db.queries.catalogue_attributes returns: {"users"|"items": {column: values}}.
CatalogueAttributes = dict[str, dict[str, list[Any]]]


@dataclass(frozen=True)
class SideInfo:
    """Dense side features, row ``idx`` for user/item index ``idx`` (row 0 is padding)."""

    user_features: Tensor  # (num_users + 1, F_u) float32
    item_features: Tensor  # (num_items + 1, F_i) float32
    user_feature_names: tuple[str, ...] = ()
    item_feature_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Catalogue:
    """Per-index attributes: element ``k`` of every list describes index ``k + 1``."""

    user_age: list[float | None] = field(default_factory=list)
    user_gender: list[str | None] = field(default_factory=list)
    user_occupation: list[str | None] = field(default_factory=list)
    item_genres: list[list[str]] = field(default_factory=list)
    item_year: list[float | None] = field(default_factory=list)
    item_price: list[float | None] = field(default_factory=list)

    @property
    def num_users(self) -> int:
        return len(self.user_age)

    @property
    def num_items(self) -> int:
        return len(self.item_genres)

    @classmethod
    def from_attributes(cls, attributes: CatalogueAttributes) -> Catalogue:
        """From :func:`recsys.db.queries.catalogue_attributes` output."""
        users, items = attributes["users"], attributes["items"]
        return cls(
            user_age=[_number(v) for v in users["age"]],
            user_gender=[_category(v) for v in users["gender"]],
            user_occupation=[_category(v) for v in users["occupation"]],
            item_genres=[_genres(v) for v in items["genres"]],
            item_year=[_number(v) for v in items["year"]],
            item_price=[_number(v) for v in items["price"]],
        )


def side_info(
    catalogue: Catalogue | CatalogueAttributes, train: TrainSet, num_users: int, num_items: int
) -> SideInfo:
    """User and item feature matrices, (num_users + 1, F_u) and (num_items + 1, F_i).

    ``catalogue`` is a :class:`Catalogue` or the plain output of
    :func:`recsys.db.queries.catalogue_attributes` it is built from.

    Users: age standardised + missing flag, gender one-hot, occupation one-hot (the 20 most
    frequent + other). Items: genres multi-hot (the 30 most frequent + other), year
    standardised + missing flag, log1p(price) standardised + missing flag, log1p(training
    event count) standardised. A missing category is an all-zero block; a missing number is
    0 (the mean) with its flag set.
    """
    if not isinstance(catalogue, Catalogue):
        catalogue = Catalogue.from_attributes(catalogue)
    if catalogue.num_users != num_users or catalogue.num_items != num_items:
        raise RecsysError(
            f"catalogue describes {catalogue.num_users} users and {catalogue.num_items} items,"
            f" the model has {num_users} and {num_items}"
        )
    user_blocks = [
        _standardised("age", catalogue.user_age),
        _one_hot("gender", [[g] if g else [] for g in catalogue.user_gender], top_k=None),
        _one_hot(
            "occupation", [[o] if o else [] for o in catalogue.user_occupation], TOP_OCCUPATIONS
        ),
    ]
    counts = np.bincount(train.item_idx, minlength=num_items + 1)[1 : num_items + 1]
    popularity = _standardised(
        "log_popularity", [math.log1p(c) for c in counts.tolist()], flag=False
    )
    item_blocks = [
        _one_hot("genre", catalogue.item_genres, TOP_GENRES),
        _standardised("year", catalogue.item_year),
        _standardised("log_price", [_log1p(p) for p in catalogue.item_price]),
        popularity,
    ]
    user_features, user_names = _stack(user_blocks, num_users)
    item_features, item_names = _stack(item_blocks, num_items)
    return SideInfo(user_features, item_features, user_names, item_names)


Block = tuple[FloatArray, list[str]]


def _standardised(name: str, values: Sequence[float | None], *, flag: bool = True) -> Block:
    """(n, 1) z-scores over the known values, 0 where missing, plus an (n, 1) missing flag."""
    known = np.array([v is not None for v in values], dtype=bool)
    raw = np.array([0.0 if v is None else v for v in values], dtype=np.float64)
    mean = float(raw[known].mean()) if known.any() else 0.0
    std = float(raw[known].std()) if known.any() else 0.0
    scaled = np.where(known, (raw - mean) / (std if std > 0 else 1.0), 0.0)
    columns, names = [scaled], [name]
    if flag:
        columns.append((~known).astype(np.float64))
        names.append(f"{name}_missing")
    return np.stack(columns, axis=1).astype(np.float32), names


def _one_hot(name: str, values: Sequence[Sequence[str]], top_k: int | None) -> Block:
    """Multi-hot over the most frequent labels (ties by name); with ``top_k``, an "other"
    column marks rows holding any label outside the vocabulary.
    """
    frequency = Counter(label for labels in values for label in set(labels))
    ranked = sorted(frequency, key=lambda label: (-frequency[label], label))
    vocabulary = ranked if top_k is None else ranked[:top_k]
    column = {label: j for j, label in enumerate(vocabulary)}
    other = len(vocabulary) if top_k is not None else None
    width = len(vocabulary) + (1 if other is not None else 0)
    out = np.zeros((len(values), width), dtype=np.float32)
    for r, labels in enumerate(values):
        for label in labels:
            j = column.get(label, other)
            if j is not None:
                out[r, j] = 1.0
    names = [f"{name}={label}" for label in vocabulary]
    if other is not None:
        names.append(f"{name}=other")
    return out, names


def _stack(blocks: Iterable[Block], rows: int) -> tuple[torch.Tensor, tuple[str, ...]]:
    """Concatenate blocks column-wise under a zero padding row. (rows + 1, F)"""
    arrays, names = [], []
    for array, block_names in blocks:
        arrays.append(array.reshape(rows, len(block_names)))
        names.extend(block_names)
    body = np.concatenate(arrays, axis=1) if arrays else np.zeros((rows, 0), np.float32)
    padded = np.concatenate([np.zeros((1, body.shape[1]), np.float32), body])
    return torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32)), tuple(names)


def _number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _log1p(value: float | None) -> float | None:
    return math.log1p(value) if value is not None and value >= 0 else None


def _category(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip().lower()
    return text or None


def _genres(value: Any) -> list[str]:
    if not value:
        return []
    if isinstance(value, str):  # a "|"-joined string, as some importers keep it
        value = value.split("|")
    return sorted({g.strip() for g in value if isinstance(g, str) and g.strip()})
