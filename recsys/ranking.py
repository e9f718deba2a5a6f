"""Ranking: from a model's scores to top-k lists, the one way the CLI, the batch and the API do it.

The rules live here once: the cold-user rule (training popularity when the model has nothing
personal to go on), exclusion of seen, of excluded and of unavailable items, soft filters with
backfill, k, top-k with ties broken by column, and the typed results. Numpy only; imports no
torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from recsys.artifacts import Artifact
from recsys.errors import RecsysError

POPULAR = "popular"  # the fallback of a list answered by the training popularity
EXPLAIN_TOP = 3

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
NO_COLUMNS: IntArray = np.zeros(0, dtype=np.int64)
# top_columns cuts a row to a pool by the maxima of blocks of TOP_BLOCK columns when it has
# more than TOP_BLOCK_SLACK blocks per item asked for (below that the pool saves nothing).
TOP_BLOCK = 64
TOP_BLOCK_SLACK = 4


@dataclass(frozen=True)
class Filters:
    """Item filters. Genre and attribute filters are soft (backfilled when too strict);
    ``exclude_items`` is hard. ``attributes`` matches keys of the items' attributes JSON."""

    include_genres: tuple[str, ...] = ()
    exclude_genres: tuple[str, ...] = ()
    exclude_items: tuple[str, ...] = ()
    attributes: dict[str, Any] = field(default_factory=dict)
    min_year: int | None = None
    max_year: int | None = None
    min_price: float | None = None
    max_price: float | None = None

    @property
    def soft(self) -> bool:
        return bool(
            self.include_genres
            or self.exclude_genres
            or self.attributes
            or self.min_year is not None
            or self.max_year is not None
            or self.min_price is not None
            or self.max_price is not None
        )


NO_FILTERS = Filters()


class Catalogue(Protocol):
    """What a ranking may know of the items beyond the model, aligned with its columns:
    titles, the columns of items that must never be recommended (unavailable), and which
    items pass a filter's soft part (with warnings about the filter)."""

    @property
    def titles(self) -> Sequence[str | None]: ...

    @property
    def unavailable(self) -> IntArray: ...

    def mask(self, filters: Filters) -> tuple[BoolArray | None, list[str]]: ...


class Because(NamedTuple):
    """A history item behind a recommendation, with its cosine similarity to it."""

    item_id: str
    title: str | None
    weight: float


class RankedItem(NamedTuple):
    """One entry of a list. ``matches_filters`` is false for a backfilled item; ``because``
    is None unless explanations were asked for.

    The entries of a list (and their reasons) are named tuples rather than frozen dataclasses:
    as immutable, and a third of the cost to build; the request path builds thousands a second.
    """

    item_id: str
    score: float
    matches_filters: bool = True
    title: str | None = None
    because: tuple[Because, ...] | None = None


@dataclass(frozen=True)
class Ranking:
    """A top-k list, best first, and how it came about.

    ``fallback`` is ``"popular"`` when the training popularity answered; ``backfilled``
    counts the items at the end that fail the soft filters; ``unknown_items`` are the history
    items the model does not know (sorted, each once).
    """

    model_version: int
    model_family: str
    items: tuple[RankedItem, ...]
    fallback: str | None = None
    backfilled: int = 0
    unknown_items: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    user_id: str | None = None
    known_user: bool | None = None
    recommendation_id: str | None = None  # set by the service: the impression's id
    arm: str | None = None  # set by the service while an experiment runs

    @property
    def item_ids(self) -> list[str]:
        return [item.item_id for item in self.items]

    @property
    def scores(self) -> list[float]:
        return [item.score for item in self.items]


class ItemScore(NamedTuple):
    item_id: str
    score: float


@dataclass(frozen=True)
class ItemScores:
    """Scores of chosen items for a user, in the order asked; unknown ids are listed apart."""

    model_version: int
    model_family: str
    user_id: str | None
    fallback: str | None
    scores: tuple[ItemScore, ...]
    unknown_items: tuple[str, ...]


@dataclass(frozen=True)
class Request:
    """One list to rank: a history (external item ids, oldest first) and what to do with it.

    ``known_user`` is passed through to the result (whether the caller's store knows the
    user); it does not change the ranking.
    """

    history: Sequence[str]
    user_id: str | None = None
    k: int = 10
    exclude_seen: bool = True
    filters: Filters = NO_FILTERS
    explain: bool = False
    known_user: bool | None = None


def personal(artifact: Artifact, counts: IntArray, users: IntArray) -> BoolArray:
    """Rows the model can personalise, (B,): a history model with at least one known item in
    the history (``counts``), or a user model with a known user (``users`` > 0). The other
    rows are answered by the training popularity, with the fallback ``"popular"``."""
    kinds = artifact.input_kinds
    rows = np.zeros(len(counts), dtype=bool)
    if "history" in kinds:
        rows |= np.asarray(counts) > 0
    if "user" in kinds:
        rows |= np.asarray(users) > 0
    return rows


def user_indices(artifact: Artifact, user_ids: Sequence[str | None]) -> IntArray:
    """The model's user indices, (B,); 0 for a user it was not trained on."""
    index = artifact.user_index
    return np.asarray([index.get(u, 0) if u is not None else 0 for u in user_ids], dtype=np.int64)


def score_rows(
    artifact: Artifact, knowns: Sequence[IntArray], user_ids: Sequence[str | None]
) -> tuple[FloatArray, list[str | None]]:
    """Writable score rows (B, I) from one run of the graph, and each row's fallback.

    ``knowns`` are the histories' known item indices, oldest first; they are left-padded to
    the longest (at most ``max_len``). Rows the model cannot personalise get the training
    popularity.
    """
    users = user_indices(artifact, user_ids)
    counts = np.asarray([len(known) for known in knowns], dtype=np.int64)
    rows = personal(artifact, counts, users)
    scores = np.empty((len(knowns), artifact.num_items), dtype=np.float32)
    scores[~rows] = artifact.popularity
    which = np.flatnonzero(rows)
    if len(which):
        window = history_window(artifact, [knowns[int(r)] for r in which])
        scores[which] = artifact.score(window, users[which])  # (B', I)
    return scores, [None if p else POPULAR for p in rows.tolist()]


def history_window(artifact: Artifact, knowns: Sequence[IntArray]) -> IntArray:
    """The last ``max_len`` known items of each history, left-padded to the longest, (B, L)."""
    tails = [known[-artifact.max_len :] for known in knowns]
    window = np.zeros((len(tails), max(1, max((len(t) for t in tails), default=0))), np.int64)
    for n, tail in enumerate(tails):
        window[n, window.shape[1] - len(tail) :] = tail
    return window


def top_columns(scores: FloatArray, k: int) -> IntArray:
    """Columns of the ``k`` best finite scores, best first; equal scores in column order.

    Fewer than ``k`` finite scores (the rest excluded as ``-inf``) give a shorter list.
    Large rows are first cut to a pool by block maxima: the k-th largest maximum of blocks of
    ``TOP_BLOCK`` columns is at most the k-th best score, so every column at or above it is
    kept and the exact selection runs on that pool alone (at 100,000 items, 0.1 ms instead of
    0.6 ms for ``np.partition`` of the whole row).
    """
    k = min(k, len(scores))
    if k <= 0:
        return NO_COLUMNS
    blocks = len(scores) // TOP_BLOCK
    if blocks > k * TOP_BLOCK_SLACK:
        maxima = scores[: blocks * TOP_BLOCK].reshape(blocks, TOP_BLOCK).max(axis=1)
        threshold = np.partition(maxima, blocks - k)[blocks - k]  # the k-th largest maximum
        if threshold > -np.inf:
            pool = np.flatnonzero(scores >= threshold)  # ascending columns
            return pool[_top_of(scores[pool], k)]
    return _top_of(scores, k)


def _top_of(scores: FloatArray, k: int) -> IntArray:
    """:func:`top_columns` by a partition of the whole of ``scores`` (``k`` <= its length)."""
    k = min(k, len(scores))
    negated = -scores
    floor = np.partition(negated, k - 1)[k - 1]  # minus the k-th best score
    # Every column reaching the k-th best score, in column order: a tie at the cut-off keeps
    # the lowest columns, and the stable sort keeps ties in column order.
    candidates = np.flatnonzero(negated <= floor if floor < np.inf else negated < np.inf)
    return candidates[np.argsort(negated[candidates], kind="stable")[:k]]


def select(scores: FloatArray, k: int, soft: BoolArray | None) -> tuple[IntArray, int]:
    """Top-``k`` columns among those passing the soft filters (``soft``, (I,)), backfilled
    with the best of the others when too few pass; also how many were backfilled (the last
    ones)."""
    if soft is None:
        return top_columns(scores, k), 0
    chosen = top_columns(np.where(soft, scores, -np.inf).astype(np.float32), k)
    if len(chosen) == k:
        return chosen, 0
    others = np.where(soft, -np.inf, scores).astype(np.float32)
    backfill = top_columns(others, k - len(chosen))
    return np.concatenate([chosen, backfill]), len(backfill)


def item_columns(artifact: Artifact, item_ids: Sequence[str]) -> IntArray:
    """Columns of the known items among ``item_ids`` (unknown ones are skipped)."""
    if not item_ids:
        return NO_COLUMNS
    index = artifact.item_index
    return np.asarray([index[i] - 1 for i in item_ids if i in index], dtype=np.int64)


def rank_scores(
    artifact: Artifact,
    scores: FloatArray,
    k: int,
    *,
    excluded: IntArray = NO_COLUMNS,
    filters: Filters = NO_FILTERS,
    catalogue: Catalogue | None = None,
    explain_with: IntArray | None = None,
    fallback: str | None = None,
    unknown_items: Sequence[str] = (),
    user_id: str | None = None,
    known_user: bool | None = None,
    candidates: IntArray | None = None,
) -> Ranking:
    """The top-``k`` list of one writable score row (I,).

    Columns in ``excluded`` (seen items, the query item), the filters' ``exclude_items`` and
    the catalogue's unavailable items are never returned: their scores become ``-inf``, and a
    list with fewer such items than ``k`` is shorter. The filters' soft part is asked of the
    ``catalogue`` and backfilled when too strict. With ``explain_with`` (the known history's
    item indices) each item says which history items it is most similar to. The next four
    arguments are carried into the result. With ``candidates`` (C,), ``scores`` holds those
    columns' scores only, (C,), and the list is ranked among them by the same rules (an
    item index's nearest items, see :mod:`recsys.retrieval`).
    """
    hidden = [excluded, item_columns(artifact, filters.exclude_items)]
    if catalogue is not None:
        hidden.append(catalogue.unavailable)
    for columns in hidden:
        if len(columns):
            where = columns if candidates is None else _members(candidates, columns)
            scores[where] = -np.inf
    soft: BoolArray | None = None
    warnings: Sequence[str] = ()
    if filters.soft:
        if catalogue is None:
            raise RecsysError("soft filters (genres, attributes, years, prices) need a catalogue")
        soft, warnings = catalogue.mask(filters)
        if soft is not None and candidates is not None:
            soft = soft[candidates]
    picked, backfilled = select(scores, k, soft)
    values = scores[picked].tolist()
    chosen = (picked if candidates is None else candidates[picked]).tolist()
    passing = len(chosen) - backfilled
    ids = artifact.item_ids
    titles = catalogue.titles if catalogue is not None else None
    reasons = None if explain_with is None else explanations(artifact, chosen, explain_with, titles)
    items = tuple(
        [
            RankedItem(
                ids[j],
                values[n],
                n < passing,
                None if titles is None else titles[j],
                None if reasons is None else reasons[n],
            )
            for n, j in enumerate(chosen)
        ]
    )
    return Ranking(
        artifact.version,
        artifact.family,
        items,
        fallback,
        backfilled,
        tuple(sorted(set(unknown_items))) if unknown_items else (),
        tuple(warnings),
        user_id,
        known_user,
    )


def _members(candidates: IntArray, columns: IntArray) -> BoolArray:
    """Which ``candidates`` are among ``columns``: by binary search when ``columns`` is sorted
    (the catalogue's unavailable items, perhaps many), else by ``np.isin``."""
    if len(columns) > 1 and bool((columns[1:] >= columns[:-1]).all()):
        at = np.minimum(np.searchsorted(columns, candidates), len(columns) - 1)
        found: BoolArray = columns[at] == candidates
        return found
    return np.isin(candidates, columns)


def explanations(
    artifact: Artifact,
    columns: Sequence[int],
    known: IntArray,
    titles: Sequence[str | None] | None = None,
) -> list[tuple[Because, ...]]:
    """For each column, the (at most 3) history items most similar to it by cosine of the
    model's item representations; empty without representations or history."""
    unit = artifact.unit_vectors
    if unit is None or len(known) == 0 or not columns:
        return [() for _ in columns]
    history = np.unique(known[-artifact.max_len :]) - 1  # (H,) columns
    similarity = unit[list(columns)] @ unit[history].T  # (K, H)
    top = min(EXPLAIN_TOP, len(history))
    best = np.argsort(-similarity, axis=1, kind="stable")[:, :top]  # (K, top)
    weights = np.take_along_axis(similarity, best, axis=1).astype(np.float64).round(4).tolist()
    ids = artifact.item_ids
    return [
        tuple(
            Because(ids[c], titles[c] if titles is not None else None, w)
            for c, w in zip(row_columns, row_weights, strict=True)
        )
        for row_columns, row_weights in zip(history[best].tolist(), weights, strict=True)
    ]


def recommend(
    artifact: Artifact,
    history: Sequence[str],
    *,
    user_id: str | None = None,
    k: int = 10,
    exclude_seen: bool = True,
    filters: Filters = NO_FILTERS,
    explain: bool = False,
    known_user: bool | None = None,
    catalogue: Catalogue | None = None,
) -> Ranking:
    """Top-``k`` items for a user (or an anonymous visitor) from their item history.

    ``history`` is external item ids, oldest first; items the model does not know are
    reported and skipped. When the model has nothing personal to go on the training
    popularity answers (``fallback="popular"``). Seen items are excluded unless
    ``exclude_seen`` is false.
    """
    request = Request(history, user_id, k, exclude_seen, filters, explain, known_user)
    return recommend_many(artifact, [request], catalogue=catalogue)[0]


def recommend_many(
    artifact: Artifact, requests: Sequence[Request], *, catalogue: Catalogue | None = None
) -> list[Ranking]:
    """:func:`recommend` for many requests at once: one run of the graph for all of them."""
    for request in requests:
        if request.k <= 0:
            raise RecsysError(f"k must be positive, got {request.k}")
    indexed = [artifact.history_indices(request.history) for request in requests]
    knowns = [known for known, _ in indexed]
    scores, fallbacks = score_rows(artifact, knowns, [request.user_id for request in requests])
    return [
        rank_scores(
            artifact,
            scores[row],
            request.k,
            excluded=known - 1 if request.exclude_seen else NO_COLUMNS,
            filters=request.filters,
            catalogue=catalogue,
            explain_with=known if request.explain else None,
            fallback=fallback,
            unknown_items=unknown,
            user_id=request.user_id,
            known_user=request.known_user,
        )
        for row, (request, (known, unknown), fallback) in enumerate(
            zip(requests, indexed, fallbacks, strict=True)
        )
    ]


def similar_items(
    artifact: Artifact,
    column: int,
    k: int,
    *,
    filters: Filters = NO_FILTERS,
    catalogue: Catalogue | None = None,
) -> Ranking:
    """The ``k`` items nearest item ``column`` by cosine of the model's item representations
    (the scores are those similarities), the item itself and unavailable items excluded.

    The caller checks that the model has representations (``artifact.unit_vectors``) and
    finds the item's column (``artifact.item_index[item_id] - 1``).
    """
    unit = artifact.unit_vectors
    if unit is None:
        raise RecsysError(f"v{artifact.version} ({artifact.family}) has no item representations")
    similarity = (unit @ unit[column]).astype(np.float32)  # (I,)
    return rank_scores(
        artifact,
        similarity,
        k,
        excluded=np.asarray([column], dtype=np.int64),
        filters=filters,
        catalogue=catalogue,
    )


def score_items(
    artifact: Artifact, history: Sequence[str], item_ids: Sequence[str], *, user_id: str | None
) -> ItemScores:
    """The scores a user's ranking gives ``item_ids`` (the popularity when cold)."""
    known, _ = artifact.history_indices(history)
    scores, (fallback,) = score_rows(artifact, [known], [user_id])
    index = artifact.item_index
    return ItemScores(
        model_version=artifact.version,
        model_family=artifact.family,
        user_id=user_id,
        fallback=fallback,
        scores=tuple(ItemScore(i, float(scores[0, index[i] - 1])) for i in item_ids if i in index),
        unknown_items=tuple(i for i in item_ids if i not in index),
    )


def rank_rows(
    artifact: Artifact,
    history: IntArray,
    users: IntArray,
    counts: IntArray,
    seen: IntArray,
    k: int,
    unavailable: IntArray = NO_COLUMNS,
) -> tuple[IntArray, FloatArray, BoolArray]:
    """Top-``k`` of many users at once, for batch scoring, by the rules of :func:`recommend`
    with seen items excluded: columns (B, K) best first, their scores (B, K), and which rows
    were personal (B,). Columns in ``unavailable`` are excluded from every row.

    ``history`` is each row's known items left-padded (B, L) and ``users`` the user indices
    (B,); ``counts`` (B,) is how many known items each whole history holds and ``seen``
    (sum of counts,) those items, row after row. TopK runs inside the graph, so the (B, I)
    matrix never leaves onnxruntime; a row with fewer than K unseen items ends in ``-inf``.
    """
    num_items = artifact.num_items
    k = min(k, num_items)
    # Enough candidates that k remain after removing each row's seen and unavailable items.
    wanted = min(num_items, k + int(counts.max(initial=0)) + len(unavailable))
    values, columns = artifact.top(history, users, wanted)  # (B, W) best first
    rows = personal(artifact, counts, users)
    cold = ~rows
    if cold.any():
        popular = artifact.popular_columns[:wanted]
        columns[cold] = popular
        values[cold] = artifact.popularity[popular]
    chosen, chosen_values = without_seen(columns, values, counts, seen, num_items, k, unavailable)
    return chosen, chosen_values, rows


def without_seen(
    columns: IntArray,
    values: FloatArray,
    counts: IntArray,
    seen: IntArray,
    num_items: int,
    k: int,
    unavailable: IntArray = NO_COLUMNS,
) -> tuple[IntArray, FloatArray]:
    """The first ``k`` candidates (B, W) of each row that are neither among its seen items
    nor ``unavailable``."""
    batch = len(columns)
    # Seen items and candidates as flat row * I + column keys.
    rows = np.repeat(np.arange(batch), counts)
    hidden = np.isin(
        np.arange(batch)[:, None] * num_items + columns, rows * num_items + (seen - 1)
    )  # (B, W)
    if len(unavailable):
        hidden |= np.isin(columns, unavailable)
    order = np.argsort(hidden, axis=1, kind="stable")[:, :k]  # unseen first, order kept
    chosen = np.take_along_axis(columns, order, axis=1)
    chosen_values = np.take_along_axis(values, order, axis=1)
    chosen_values[np.take_along_axis(hidden, order, axis=1)] = -np.inf
    return chosen, chosen_values
