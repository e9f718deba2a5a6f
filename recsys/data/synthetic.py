"""Synthetic interactions with known structure a learning model can exploit and popularity cannot.

Long-tail item popularity, user taste clusters (genres) and deterministic "series" habits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from recsys.data.frames import ImportBatch
from recsys.errors import RecsysError

logger = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

GENRES = (
    "Action",
    "Comedy",
    "Drama",
    "Horror",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "Documentary",
    "Animation",
    "Fantasy",
)
OCCUPATIONS = (
    "student",
    "engineer",
    "teacher",
    "artist",
    "healthcare",
    "sales",
    "retired",
    "other",
)
EVENT_TYPES = ("view", "click", "purchase")
EVENT_PROBS = (0.7, 0.2, 0.1)
PURCHASE = 2

POPULARITY_EXPONENT = 1.0
DOMINANT_PROB = 0.8
SECONDARY_PROB = 0.1
SECOND_GENRE_PROB = 0.3
LENGTH_SIGMA = 1.0
SESSION_PROB = 0.75
SESSION_GAP_MS = 3 * 60_000.0
BREAK_GAP_MS = 1.5 * 86_400_000.0
MS_PER_DAY = 86_400_000

_SEEN_BUDGET_BYTES = 1 << 28
_TASTE_RETRIES = 8
_UNIFORM_RETRIES = 24


@dataclass(frozen=True)
class SyntheticConfig:
    """Size, seed and behaviour of a synthetic dataset; the same config gives the same frames."""

    num_users: int
    num_items: int
    num_interactions: int
    seed: int = 0
    num_clusters: int = 8
    sequential_prob: float = 0.5
    start: str = "2024-01-01"
    days: int = 180


def validate(config: SyntheticConfig) -> None:
    """Raise :class:`RecsysError` with a one-line message if ``config`` cannot be generated."""
    for name in ("num_users", "num_items", "num_interactions", "num_clusters", "days"):
        value = getattr(config, name)
        if value <= 0:
            raise RecsysError(f"{name} must be positive, got {value}")
    if config.num_items < 10:
        raise RecsysError(f"num_items must be at least 10, got {config.num_items}")
    if config.num_interactions < config.num_users:
        raise RecsysError(
            f"num_interactions ({config.num_interactions}) must be at least num_users "
            f"({config.num_users}): every user needs one interaction"
        )
    most = config.num_users * (config.num_items // 2)
    if config.num_interactions > most:
        raise RecsysError(
            f"num_interactions ({config.num_interactions}) exceeds num_users * (num_items // 2) "
            f"= {most}: a user sees at most half the catalogue"
        )
    if config.num_clusters > config.num_items:
        raise RecsysError(
            f"num_clusters ({config.num_clusters}) must not exceed num_items ({config.num_items})"
        )
    if not 0.0 <= config.sequential_prob <= 1.0:
        raise RecsysError(f"sequential_prob must be in [0, 1], got {config.sequential_prob}")
    _start_ms(config.start)


def generate(config: SyntheticConfig) -> ImportBatch:
    """Generate users, items and interactions; see the module docstring for the structure.

    Interactions are ordered by user (``u1``, ``u2``, ...) and by time within a user; every
    user has at least one and at most ``num_items // 2`` distinct items, and the total is
    exactly ``num_interactions``.
    """
    validate(config)
    rng = np.random.default_rng(config.seed)
    catalogue = _Catalogue.build(config.num_items, config.num_clusters, rng)
    dominant, secondary = _tastes(config.num_users, config.num_clusters, rng)
    lengths = _lengths(config.num_users, config.num_interactions, config.num_items // 2, rng)
    item_idx = _sequences(lengths, dominant, secondary, catalogue, config.sequential_prob, rng)
    occurred_at = _timestamps(lengths, _start_ms(config.start), config.days * MS_PER_DAY, rng)

    prices = _prices(config.num_items, rng)
    event_code = rng.choice(len(EVENT_TYPES), size=item_idx.size, p=EVENT_PROBS)
    value = np.where(event_code == PURCHASE, prices[item_idx], np.nan)

    user_ids = np.array([f"u{k}" for k in range(1, config.num_users + 1)], dtype=object)
    item_ids = np.array([f"i{k}" for k in range(1, config.num_items + 1)], dtype=object)
    user_idx = np.repeat(np.arange(config.num_users), lengths)
    interactions = pd.DataFrame(
        {
            "user_id": pd.Series(user_ids[user_idx], dtype=object),
            "item_id": pd.Series(item_ids[item_idx], dtype=object),
            "event_type": pd.Series(np.array(EVENT_TYPES, dtype=object)[event_code], dtype=object),
            "value": pd.Series(value, dtype="float64"),
            "occurred_at": pd.Series(occurred_at, dtype="int64"),
        }
    )
    logger.info(
        "generated %d interactions for %d users and %d items",
        len(interactions),
        config.num_users,
        config.num_items,
    )
    return ImportBatch(
        kind="synthetic",
        source="synthetic",
        interactions=interactions,
        items=_items_frame(item_ids, catalogue, prices, config.num_clusters, rng),
        users=_users_frame(user_ids, dominant, config.num_clusters, rng),
        rows_read=len(interactions),
    )


def genre_names(num_clusters: int) -> list[str]:
    """One genre name per cluster; names repeat with a numeric suffix past the fixed list."""
    return [
        GENRES[c % len(GENRES)] + ("" if c < len(GENRES) else f" {c // len(GENRES) + 1}")
        for c in range(num_clusters)
    ]


def _start_ms(start: str) -> int:
    try:
        stamp = pd.Timestamp(start)
    except (ValueError, TypeError) as exc:
        raise RecsysError(f"start must be a date such as 2024-01-01, got {start!r}") from exc
    if pd.isna(stamp):
        raise RecsysError(f"start must be a date such as 2024-01-01, got {start!r}")
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return int(stamp.value // 1_000_000)


@dataclass(frozen=True)
class _Catalogue:
    """Item structure: genre, popularity samplers and the deterministic successor of each item.

    ``by_cluster`` lists items grouped by cluster, most popular first; ``cluster_cdf`` holds
    ``cluster + within-cluster cumulative share`` along it, so one ``searchsorted`` of
    ``cluster + u`` samples from any cluster. The successor of an item is the next one in that
    order (cyclic inside its cluster), like the next title of a series.
    """

    cluster: IntArray
    second: IntArray
    global_cdf: FloatArray
    by_cluster: IntArray
    cluster_cdf: FloatArray
    cluster_end: IntArray
    successor: IntArray

    @classmethod
    def build(cls, num_items: int, num_clusters: int, rng: np.random.Generator) -> _Catalogue:
        rank = rng.permutation(num_items)
        weight = (rank + 1.0) ** -POPULARITY_EXPONENT
        cluster = rng.permutation(np.arange(num_items) % num_clusters)
        second = np.full(num_items, -1, dtype=np.int64)
        if num_clusters > 1:
            has_second = rng.random(num_items) < SECOND_GENRE_PROB
            other = (cluster + rng.integers(1, num_clusters, num_items)) % num_clusters
            second[has_second] = other[has_second]

        global_cdf = np.cumsum(weight) / weight.sum()
        global_cdf[-1] = 1.0

        by_cluster = np.lexsort((rank, cluster)).astype(np.int64)
        sizes = np.bincount(cluster, minlength=num_clusters)
        end = np.cumsum(sizes)
        begin = end - sizes
        sorted_weight = weight[by_cluster]
        running = np.cumsum(sorted_weight)
        before = np.repeat(running[begin] - sorted_weight[begin], sizes)
        total = np.repeat(running[end - 1], sizes) - before
        share = (running - before) / total
        share[end - 1] = 1.0
        cluster_cdf = cluster[by_cluster] + share

        following = np.arange(1, num_items + 1)
        following[end - 1] = begin
        successor = np.empty(num_items, dtype=np.int64)
        successor[by_cluster] = by_cluster[following]
        return cls(
            cluster=cluster.astype(np.int64),
            second=second,
            global_cdf=global_cdf,
            by_cluster=by_cluster,
            cluster_cdf=cluster_cdf,
            cluster_end=end.astype(np.int64),
            successor=successor,
        )

    def draw(self, dominant: IntArray, secondary: IntArray, rng: np.random.Generator) -> IntArray:
        """One item per user: own clusters by in-cluster popularity, otherwise global popularity."""
        n = dominant.size
        u = rng.random(n)
        v = rng.random(n)
        cluster = np.where(u < DOMINANT_PROB, dominant, secondary)
        pos = np.searchsorted(self.cluster_cdf, cluster + v, side="right")
        # cluster + v can round up to cluster + 1.0; clamp to the cluster's last item.
        pos = np.minimum(pos, self.cluster_end[cluster] - 1)
        in_cluster = self.by_cluster[pos]
        popular = np.minimum(
            np.searchsorted(self.global_cdf, v, side="right"), self.global_cdf.size - 1
        )
        return np.where(u < DOMINANT_PROB + SECONDARY_PROB, in_cluster, popular).astype(np.int64)


def _tastes(
    num_users: int, num_clusters: int, rng: np.random.Generator
) -> tuple[IntArray, IntArray]:
    dominant = rng.integers(0, num_clusters, num_users)
    if num_clusters == 1:
        return dominant, dominant.copy()
    secondary = (dominant + rng.integers(1, num_clusters, num_users)) % num_clusters
    return dominant, secondary


def _lengths(num_users: int, num_interactions: int, cap: int, rng: np.random.Generator) -> IntArray:
    """Long-tailed (lognormal) per-user lengths in [1, cap] summing to ``num_interactions``.

    The extra interactions beyond one per user are shared in proportion to lognormal weights,
    water-filling past users that hit the cap; the rounding remainder goes to the largest
    fractional shares.
    """
    weight = rng.lognormal(0.0, LENGTH_SIGMA, num_users)
    extra = num_interactions - num_users
    room = cap - 1
    share = np.zeros(num_users)
    free = np.ones(num_users, dtype=bool)
    while free.any():
        budget = extra - room * (num_users - int(free.sum()))
        share[free] = budget * weight[free] / weight[free].sum()
        over = free & (share > room)
        if not over.any():
            break
        share[over] = room
        free &= ~over
    whole = np.minimum(np.floor(share).astype(np.int64), room)
    fraction = np.where(whole < room, share - whole, -1.0)
    deficit = extra - int(whole.sum())
    whole[np.argsort(-fraction, kind="stable")[:deficit]] += 1
    return whole + 1


def _sequences(
    lengths: IntArray,
    dominant: IntArray,
    secondary: IntArray,
    catalogue: _Catalogue,
    sequential_prob: float,
    rng: np.random.Generator,
) -> IntArray:
    """Item index of every interaction, grouped by user in user order, in time order.

    Users are processed longest first in chunks whose dense ``seen`` matrix fits a fixed
    memory budget; inside a chunk the loop runs over sequence positions, vectorised across
    the users still active at that position (a prefix, as the chunk is sorted by length).
    """
    num_items = catalogue.cluster.size
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    out = np.empty(int(lengths.sum()), dtype=np.int64)
    longest_first = np.argsort(-lengths, kind="stable")
    chunk = max(1, _SEEN_BUDGET_BYTES // num_items)
    for lo in range(0, lengths.size, chunk):
        users = longest_first[lo : lo + chunk]
        _fill_chunk(
            out,
            offsets[users],
            lengths[users],
            dominant[users],
            secondary[users],
            catalogue,
            sequential_prob,
            rng,
        )
    return out


def _fill_chunk(
    out: IntArray,
    offsets: IntArray,
    lengths: IntArray,
    dominant: IntArray,
    secondary: IntArray,
    catalogue: _Catalogue,
    sequential_prob: float,
    rng: np.random.Generator,
) -> None:
    num_items = catalogue.cluster.size
    seen = np.zeros((lengths.size, num_items), dtype=bool)
    previous = np.zeros(lengths.size, dtype=np.int64)
    rows_all = np.arange(lengths.size)
    # lengths are descending, so the users active at position t are rows [0, active[t]).
    active = np.searchsorted(-lengths, -np.arange(int(lengths[0])), side="left")
    for t, n in enumerate(active.tolist()):
        rows = rows_all[:n]
        pick = catalogue.draw(dominant[:n], secondary[:n], rng)
        if t > 0 and sequential_prob > 0.0:
            follow = catalogue.successor[previous[:n]]
            use = (rng.random(n) < sequential_prob) & ~seen[rows, follow]
            pick = np.where(use, follow, pick)
        bad = np.flatnonzero(seen[rows, pick])
        for _ in range(_TASTE_RETRIES):
            if bad.size == 0:
                break
            pick[bad] = catalogue.draw(dominant[bad], secondary[bad], rng)
            bad = bad[seen[bad, pick[bad]]]
        for _ in range(_UNIFORM_RETRIES):
            if bad.size == 0:
                break
            pick[bad] = rng.integers(0, num_items, bad.size)
            bad = bad[seen[bad, pick[bad]]]
        for row in bad.tolist():
            pick[row] = rng.choice(np.flatnonzero(~seen[row]))
        seen[rows, pick] = True
        previous[:n] = pick
        out[offsets[:n] + t] = pick


def _timestamps(
    lengths: IntArray, start_ms: int, window_ms: int, rng: np.random.Generator
) -> IntArray:
    """Epoch ms per interaction, strictly increasing per user, all in [start, start + window].

    Gaps mix short in-session pauses (minutes) and breaks (days), both exponential; a user
    whose gaps overrun the window has them scaled down, keeping at least 1 ms between events.
    """
    total = int(lengths.sum())
    first = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    gaps = np.where(
        rng.random(total) < SESSION_PROB,
        rng.exponential(SESSION_GAP_MS, total),
        rng.exponential(BREAK_GAP_MS, total),
    )
    gaps[first] = 0.0
    span = np.add.reduceat(gaps, first)
    # Leave 1 ms per event for the +1 below so the scaled span stays inside the window.
    scale = np.minimum(1.0, (window_ms - lengths) / np.maximum(span, 1.0))
    gap_ms = np.floor(gaps * np.repeat(scale, lengths)).astype(np.int64) + 1
    gap_ms[first] = 0
    running = np.cumsum(gap_ms)
    within = running - np.repeat(running[first], lengths)
    user_span = within[first + lengths - 1]
    begin = np.floor(rng.random(lengths.size) * (window_ms - user_span + 1)).astype(np.int64)
    stamps: IntArray = start_ms + np.repeat(begin, lengths) + within
    return stamps


def _prices(num_items: int, rng: np.random.Generator) -> FloatArray:
    return np.maximum(np.round(rng.lognormal(2.5, 0.7, num_items), 2), 0.99)


def _items_frame(
    item_ids: npt.NDArray[np.object_],
    catalogue: _Catalogue,
    prices: FloatArray,
    num_clusters: int,
    rng: np.random.Generator,
) -> pd.DataFrame:
    names = genre_names(num_clusters)
    genres = [
        [names[c]] if s < 0 else [names[c], names[s]]
        for c, s in zip(catalogue.cluster.tolist(), catalogue.second.tolist(), strict=True)
    ]
    num_items = item_ids.size
    return pd.DataFrame(
        {
            "item_id": pd.Series(item_ids, dtype=object),
            "title": pd.Series([f"Item {k}" for k in range(1, num_items + 1)], dtype=object),
            "genres": pd.Series(genres, dtype=object),
            "year": pd.Series(rng.integers(1980, 2025, num_items), dtype="int64"),
            "price": pd.Series(prices, dtype="float64"),
            "attributes": pd.Series(
                [{"cluster": c} for c in catalogue.cluster.tolist()], dtype=object
            ),
        }
    )


def _users_frame(
    user_ids: npt.NDArray[np.object_],
    dominant: IntArray,
    num_clusters: int,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """Demographics drawn per taste cluster (age band, gender mix, occupation, region)."""
    num_users = user_ids.size
    age_centre = 22.0 + 45.0 * rng.permutation(num_clusters) / max(num_clusters - 1, 1)
    age = np.clip(np.rint(rng.normal(age_centre[dominant], 5.0)), 18, 75).astype(np.int64)

    female_share = rng.uniform(0.2, 0.8, num_clusters)
    u = rng.random(num_users)
    gender = np.where(u < 0.03, "X", np.where(u < 0.03 + 0.97 * female_share[dominant], "F", "M"))

    favourite = rng.integers(0, len(OCCUPATIONS), num_clusters)
    occupation_idx = np.where(
        rng.random(num_users) < 0.6,
        favourite[dominant],
        rng.integers(0, len(OCCUPATIONS), num_users),
    )
    region = rng.integers(0, 10, num_clusters)
    first_digit = np.where(
        rng.random(num_users) < 0.7, region[dominant], rng.integers(0, 10, num_users)
    )
    zip_code = first_digit * 10_000 + rng.integers(0, 10_000, num_users)
    return pd.DataFrame(
        {
            "user_id": pd.Series(user_ids, dtype=object),
            "age": pd.Series(age, dtype="int64"),
            "gender": pd.Series(gender.astype(object), dtype=object),
            "occupation": pd.Series(
                np.array(OCCUPATIONS, dtype=object)[occupation_idx], dtype=object
            ),
            "zip_code": pd.Series([f"{z:05d}" for z in zip_code.tolist()], dtype=object),
            "attributes": pd.Series([None] * num_users, dtype=object),
        }
    )
