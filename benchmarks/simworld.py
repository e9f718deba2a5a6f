"""The simulated world of benchmarks/simulate.py: users and items with hidden preferences.

Every user ``u`` and item ``i`` has a latent vector (``dim`` numbers; users' drawn from
N(0, 1), items' from N(0, 1/dim), so a dot product has variance about 1) and every item a
popularity bias ``b_i`` drawn from N(0, ``popularity``^2). A user's utility for an item is

    s(u, i) = taste * <x_u, y_i> + b_i

which no model sees. Two things are drawn from it:

- **History** (the home's data): each user gets ``history`` distinct items (at least
  ``history_min``; Poisson around ``history_mean``), drawn without replacement with
  probability proportional to ``exp(s(u, i))`` (a softmax, by Gumbel top-h), at times spread
  over the ``history_days`` before the run. EASE can learn the co-occurrence structure the
  latent vectors leave; popularity sees only ``b_i`` and the taste averaged over users.
- **Clicks** on a shown list (the position-based click model): the item at rank ``r``
  (1-based) is examined with probability ``r ** -position_decay`` and, if examined, clicked
  with probability ``sigmoid(click_offset + click_scale * s(u, i))``; ranks are independent,
  so a list can get several clicks or none. Click-through at k (what the service's
  experiments compare) is the chance of at least one click: ``1 - prod_r (1 - p_r)``.

:meth:`World.shift` moves preferences: it permutes the latent vectors of a share of the
items among themselves (biases stay), so what users like no longer matches what their
history, and any model trained on it, says. It exists for a drift scenario; the A/B and
A/A runs of simulate.py never call it (see ``Driver.before_window`` there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from recsys.data.frames import ImportBatch

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
MS_PER_DAY = 86_400_000


@dataclass(frozen=True)
class WorldConfig:
    num_users: int = 5000
    num_items: int = 300
    dim: int = 8
    taste: float = 1.5
    popularity: float = 1.0
    history_mean: float = 15.0
    history_min: int = 5
    history_days: int = 60
    click_offset: float = -6.0
    click_scale: float = 1.0
    position_decay: float = 1.0
    seed: int = 0

    def report(self) -> dict[str, Any]:
        return asdict(self)


class World:
    """Hidden preferences, the history they produce, and clicks on shown lists (seeded)."""

    def __init__(self, config: WorldConfig) -> None:
        if config.num_users < 1 or config.num_items < 2 or config.dim < 1:
            raise ValueError(f"a world needs users, items and dimensions: {config}")
        self.config = config
        rng = np.random.default_rng(config.seed)
        self.user_vectors: FloatArray = rng.normal(size=(config.num_users, config.dim))
        self.item_vectors: FloatArray = rng.normal(size=(config.num_items, config.dim)) / np.sqrt(
            config.dim
        )
        self.item_bias: FloatArray = rng.normal(0.0, config.popularity, config.num_items)
        self.user_ids = [f"u{n}" for n in range(1, config.num_users + 1)]
        self.item_ids = [f"i{n}" for n in range(1, config.num_items + 1)]
        self._user_index = {u: n for n, u in enumerate(self.user_ids)}
        self._item_index = {i: n for n, i in enumerate(self.item_ids)}
        self.shifts = 0

    # Preferences ------------------------------------------------------------------------

    def utility(self, user: int, items: IntArray | None = None) -> FloatArray:
        """s(u, i) of one user (an index) for ``items`` (indices; all when None)."""
        vectors = self.item_vectors if items is None else self.item_vectors[items]
        bias = self.item_bias if items is None else self.item_bias[items]
        out: FloatArray = self.config.taste * (vectors @ self.user_vectors[user]) + bias
        return out

    def examination(self, k: int) -> FloatArray:
        """The chance that each of ranks 1..k is looked at."""
        ranks = np.arange(1, k + 1, dtype=np.float64)
        out: FloatArray = ranks ** (-self.config.position_decay)
        return out

    def click_probabilities(self, user_id: str, item_ids: Sequence[str]) -> FloatArray:
        """The chance of a click on each item of a list shown to ``user_id``, in rank order."""
        user = self._user_index[user_id]
        items = np.array([self._item_index[i] for i in item_ids], dtype=np.int64)
        z = self.config.click_offset + self.config.click_scale * self.utility(user, items)
        attracted = 1.0 / (1.0 + np.exp(-z))
        out: FloatArray = self.examination(len(item_ids)) * attracted
        return out

    def expected_ctr(self, user_id: str, item_ids: Sequence[str]) -> float:
        """The chance of at least one click on the list (click-through at its length)."""
        if not item_ids:
            return 0.0
        return float(1.0 - np.prod(1.0 - self.click_probabilities(user_id, item_ids)))

    def clicks(self, user_id: str, item_ids: Sequence[str], rng: np.random.Generator) -> list[str]:
        """The items the user clicks, in rank order (independent draws per rank)."""
        if not item_ids:
            return []
        p = self.click_probabilities(user_id, item_ids)
        hit = rng.random(len(item_ids)) < p
        return [item for item, h in zip(item_ids, hit.tolist(), strict=True) if h]

    def best_items(self, user_id: str, k: int, exclude: Sequence[str] = ()) -> list[str]:
        """The k items of highest utility for the user (an oracle, for reference)."""
        scores = self.utility(self._user_index[user_id]).copy()
        for item in exclude:
            scores[self._item_index[item]] = -np.inf
        order = np.argsort(-scores, kind="stable")[:k]
        return [self.item_ids[n] for n in order.tolist()]

    def browse(self, user_id: str, exclude: set[str], rng: np.random.Generator) -> str | None:
        """One item the user picks outside any recommendation: a softmax draw by their
        current utility among the items not in ``exclude`` (how the history was drawn)."""
        scores = self.utility(self._user_index[user_id]) + rng.gumbel(size=self.config.num_items)
        for item in exclude:
            scores[self._item_index[item]] = -np.inf
        best = int(np.argmax(scores))
        return None if np.isneginf(scores[best]) else self.item_ids[best]

    # Drift ------------------------------------------------------------------------------

    def shift(self, fraction: float, seed: int) -> list[str]:
        """Permute the latent vectors of ``fraction`` of the items among themselves.

        Users' tastes stay; what each moved item offers changes, so the history (and a model
        trained on it) points at items users no longer prefer. Returns the moved items.
        """
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        rng = np.random.default_rng(seed)
        count = round(fraction * self.config.num_items)
        if count < 2:
            return []
        moved = rng.choice(self.config.num_items, size=count, replace=False)
        # A cyclic shift of a random order: every chosen item gets another one's vector.
        self.item_vectors[moved] = self.item_vectors[np.roll(moved, 1)]
        self.shifts += 1
        return [self.item_ids[n] for n in sorted(moved.tolist())]

    # History ----------------------------------------------------------------------------

    def histories(self) -> list[IntArray]:
        """Each user's history, item indices in time order (the same for the same seed)."""
        config = self.config
        rng = np.random.default_rng([config.seed, 1])
        lengths = np.maximum(config.history_min, rng.poisson(config.history_mean, config.num_users))
        lengths = np.minimum(lengths, config.num_items // 2)
        out = []
        for user, length in enumerate(lengths.tolist()):
            gumbel = rng.gumbel(size=config.num_items)
            order = np.argsort(-(self.utility(user) + gumbel), kind="stable")
            out.append(order[:length].astype(np.int64))  # Gumbel top-h: a softmax draw
        return out

    def import_batch(self, now_ms: int) -> ImportBatch:
        """The histories as an import: ``interaction`` events before ``now_ms``, and items."""
        config = self.config
        histories = self.histories()
        rng = np.random.default_rng([config.seed, 2])
        span = config.history_days * MS_PER_DAY
        users, items, times = [], [], []
        for user, history in enumerate(histories):
            stamps = np.sort(rng.integers(now_ms - span, now_ms - 60_000, history.size))
            users += [self.user_ids[user]] * history.size
            items += [self.item_ids[n] for n in history.tolist()]
            times += stamps.tolist()
        interactions = pd.DataFrame(
            {
                "user_id": pd.Series(users, dtype=object),
                "item_id": pd.Series(items, dtype=object),
                "event_type": pd.Series(["interaction"] * len(users), dtype=object),
                "value": pd.Series([np.nan] * len(users), dtype="float64"),
                "occurred_at": pd.Series(times, dtype="int64"),
            }
        )
        catalogue = pd.DataFrame(
            {
                "item_id": pd.Series(self.item_ids, dtype=object),
                "title": pd.Series([f"Item {i}" for i in self.item_ids], dtype=object),
                "genres": pd.Series([None] * config.num_items, dtype=object),
                "year": pd.Series([None] * config.num_items, dtype=object),
                "price": pd.Series([np.nan] * config.num_items, dtype="float64"),
                "attributes": pd.Series([None] * config.num_items, dtype=object),
            }
        )
        return ImportBatch(
            kind="simulated",
            source=f"simulated world (seed {config.seed})",
            interactions=interactions,
            items=catalogue,
            rows_read=len(interactions),
        )
