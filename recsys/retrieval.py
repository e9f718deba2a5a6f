"""Top-k through the item index for artifacts that carry one; the others score every item.

What the service, ``recsys recommend`` and the batch call. An artifact with an item index (a
sequence model over at least ``RECSYS_ANN_MIN_ITEMS`` items) encodes each history with its
encoder graph and asks the index for more candidates than ``k``: ``k``, the items the list
must leave out (the seen ones, ``exclude_items``) and a margin. :mod:`recsys.ranking` then
applies its rules among them (seen, excluded and unavailable items, soft filters, the
popularity fallback, explanations). A list the rules leave short or backfilled asks again for
``GROWTH`` times as many candidates, and past ``MAX_CANDIDATES`` is ranked over every item
vector exactly. Any other artifact goes straight to :mod:`recsys.ranking`. Numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from recsys import ranking
from recsys.artifacts import Artifact
from recsys.errors import RecsysError
from recsys.ranking import (
    NO_COLUMNS,
    NO_FILTERS,
    POPULAR,
    Catalogue,
    Filters,
    ItemScore,
    ItemScores,
    Ranking,
    Request,
)

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

MARGIN = 20  # candidates beyond k and the items a list leaves out
GROWTH = 4
MAX_CANDIDATES = 4096  # beyond this a list is ranked over every item vector


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
    """:func:`recsys.ranking.recommend`, through the item index when the artifact has one."""
    request = Request(history, user_id, k, exclude_seen, filters, explain, known_user)
    return recommend_many(artifact, [request], catalogue=catalogue)[0]


def recommend_many(
    artifact: Artifact, requests: Sequence[Request], *, catalogue: Catalogue | None = None
) -> list[Ranking]:
    """:func:`recsys.ranking.recommend_many`, through the item index when the artifact has
    one: one encoder run and one index search for all the requests."""
    if artifact.retrieval is None:
        return ranking.recommend_many(artifact, requests, catalogue=catalogue)
    for request in requests:
        if request.k <= 0:
            raise RecsysError(f"k must be positive, got {request.k}")
    indexed = [artifact.history_indices(request.history) for request in requests]
    knowns = [known for known, _ in indexed]
    vectors = user_vectors(artifact, knowns)
    wanted = [_wanted(request, len(known)) for request, known in zip(requests, knowns, strict=True)]
    personal = {n: vector for n, vector in enumerate(vectors) if vector is not None}
    found: dict[int, tuple[IntArray, FloatArray]] = {}
    if personal:
        count = min(MAX_CANDIDATES, max(wanted[n] for n in personal))
        columns, scores = artifact.index.search(np.stack(list(personal.values())), count)
        found = {n: _in_column_order(columns[row], scores[row]) for row, n in enumerate(personal)}
    return [
        _rank(artifact, request, known, unknown, vectors[n], found.get(n), wanted[n], catalogue)
        for n, (request, (known, unknown)) in enumerate(zip(requests, indexed, strict=True))
    ]


def user_vectors(artifact: Artifact, knowns: Sequence[IntArray]) -> list[FloatArray | None]:
    """Each history's user vector (D,) from one encoder run; None where the model has nothing
    to go on (no known item: the popularity answers)."""
    out: list[FloatArray | None] = [None] * len(knowns)
    which = [n for n, known in enumerate(knowns) if len(known)]
    if which:
        encoded = artifact.encode(ranking.history_window(artifact, [knowns[n] for n in which]))
        for row, n in enumerate(which):
            out[n] = encoded[row]
    return out


def _wanted(request: Request, seen: int) -> int:
    hidden = (seen if request.exclude_seen else 0) + len(request.filters.exclude_items)
    return request.k + hidden + MARGIN


def _rank(
    artifact: Artifact,
    request: Request,
    known: IntArray,
    unknown: Sequence[str],
    vector: FloatArray | None,
    found: tuple[IntArray, FloatArray] | None,
    count: int,
    catalogue: Catalogue | None,
) -> Ranking:
    """One list among the index's candidates, asking for more until the rules are met."""

    def ranked(scores: FloatArray, columns: IntArray | None) -> Ranking:
        return ranking.rank_scores(
            artifact,
            scores,
            request.k,
            excluded=known - 1 if request.exclude_seen else NO_COLUMNS,
            filters=request.filters,
            catalogue=catalogue,
            explain_with=known if request.explain else None,
            fallback=None if vector is not None else POPULAR,
            unknown_items=unknown,
            user_id=request.user_id,
            known_user=request.known_user,
            candidates=columns,
        )

    while count <= MAX_CANDIDATES:
        columns, scores = found if found is not None else candidates(artifact, vector, count)
        found = None
        answer = ranked(scores.copy(), columns)
        whole = len(columns) >= artifact.num_items
        if whole or (len(answer.items) == request.k and answer.backfilled == 0):
            return answer
        count *= GROWTH
    return ranked(exact_scores(artifact, vector), None)


def candidates(
    artifact: Artifact, vector: FloatArray | None, count: int
) -> tuple[IntArray, FloatArray]:
    """Up to ``count`` candidate columns in column order and their scores, (C,), (C,): the
    index's nearest items to ``vector``, or the most popular items when it is None."""
    if vector is None:
        columns = np.sort(artifact.popular_columns[:count])
        return columns, artifact.popularity[columns].copy()
    found, scores = artifact.index.search(vector[None, :], count)
    return _in_column_order(found[0], scores[0])


def _in_column_order(columns: IntArray, scores: FloatArray) -> tuple[IntArray, FloatArray]:
    """An index's candidates (-1 where it found fewer) by column: equal scores then go to
    the lower column, as in exact ranking."""
    keep = columns >= 0
    order = np.argsort(columns[keep], kind="stable")
    return columns[keep][order], scores[keep][order]


def exact_scores(artifact: Artifact, vector: FloatArray | None) -> FloatArray:
    """Every item's score, (I,): the user vector against every item vector (the scoring
    graph's scores within the parity tolerance), or the popularity when it is None."""
    if vector is None:
        return artifact.popularity.copy()
    scores: FloatArray = np.asarray(artifact.output_vectors @ vector, dtype=np.float32)
    return scores


def score_items(
    artifact: Artifact, history: Sequence[str], item_ids: Sequence[str], *, user_id: str | None
) -> ItemScores:
    """:func:`recsys.ranking.score_items`; with an item index, only the asked items' vectors."""
    if artifact.retrieval is None:
        return ranking.score_items(artifact, history, item_ids, user_id=user_id)
    known, _ = artifact.history_indices(history)
    (vector,) = user_vectors(artifact, [known])
    index = artifact.item_index
    columns = np.asarray([index[i] - 1 for i in item_ids if i in index], dtype=np.int64)
    if vector is None:
        values = artifact.popularity[columns]
    else:
        values = np.asarray(artifact.output_vectors[columns] @ vector, dtype=np.float32)
    ids = [i for i in item_ids if i in index]
    return ItemScores(
        model_version=artifact.version,
        model_family=artifact.family,
        user_id=user_id,
        fallback=None if vector is not None else POPULAR,
        scores=tuple(ItemScore(i, float(v)) for i, v in zip(ids, values.tolist(), strict=True)),
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
) -> tuple[IntArray, FloatArray, npt.NDArray[np.bool_]]:
    """:func:`recsys.ranking.rank_rows` for the batch; with an item index, each row's
    candidates come from one index search, and a row they leave short is ranked exactly."""
    if artifact.retrieval is None:
        return ranking.rank_rows(artifact, history, users, counts, seen, k, unavailable)
    num_items = artifact.num_items
    k = min(k, num_items)
    wanted = min(num_items, k + int(counts.max(initial=0)) + MARGIN)
    rows = ranking.personal(artifact, counts, users)
    popular = artifact.popular_columns[:wanted]
    columns = np.tile(popular, (len(history), 1))  # (B, W)
    values = np.tile(artifact.popularity[popular], (len(history), 1))
    which = np.flatnonzero(rows)
    vectors = artifact.encode(history[which]) if len(which) else None  # (B', D)
    if vectors is not None:
        columns[which], values[which] = artifact.index.search(vectors, wanted)
    chosen, chosen_values = ranking.without_seen(
        columns, values, counts, seen, num_items, k, unavailable
    )
    starts = np.cumsum(counts) - counts
    vector_of = {int(r): n for n, r in enumerate(which)}
    for r in np.flatnonzero(np.isneginf(chosen_values).any(axis=1)).tolist():
        vector = None if vectors is None or r not in vector_of else vectors[vector_of[r]]
        scores = exact_scores(artifact, vector)
        scores[seen[starts[r] : starts[r] + counts[r]] - 1] = -np.inf
        scores[unavailable] = -np.inf
        top = ranking.top_columns(scores, k)
        chosen[r], chosen_values[r] = -1, -np.inf
        chosen[r, : len(top)], chosen_values[r, : len(top)] = top, scores[top]
    return chosen, chosen_values, rows
