"""Ranking rules on hand-built graphs whose right answers are known, and the three ranking paths
(the CLI's recommend, the batch flow, the API's scorer) agreeing on one exported model."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from sqlalchemy import select

from recsys import ranking, registry, retrieval
from recsys.artifacts import ONNX_FILE, Artifact
from recsys.batch import batch_recommend
from recsys.db.events import Event, record_events
from recsys.db.queries import user_history
from recsys.db.schema import recommendations_table
from recsys.errors import RecsysError
from recsys.ranking import Because, Filters, Request
from serving.scorer import Scorer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
from conftest import Home, make_home

ITEMS = ["a", "b", "c", "d", "e", "f"]  # columns 0-5, item indices 1-6
# Row i of a history model: what history item index i adds to each item's score.
HISTORY_TABLE = np.array(
    [
        [0, 0, 0, 0, 0, 0],  # padding
        [0, 5, 4, 3, 2, 1],  # a
        [5, 0, 1, 1, 1, 1],  # b
        [1, 2, 0, 9, 2, 1],  # c
        [0, 0, 0, 0, 0, 0],  # d
        [0, 0, 0, 0, 0, 0],  # e
        [0, 0, 0, 0, 0, 0],  # f
    ],
    dtype=np.float32,
)
# Row u of a user model: user u's scores (row 0: an unknown user, never scored).
USER_TABLE = np.array(
    [[0, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1]], dtype=np.float32
)
# Ties on purpose: d, a and f share a count, as do b and e.
POPULARITY = np.array([3, 2, 7, 3, 2, 3], dtype=np.float32)


def _graph(kind: str) -> onnx.ModelProto:
    """scores (B, I): the sum of the history items' rows, or the user's row."""
    if kind == "history":
        table = numpy_helper.from_array(HISTORY_TABLE, "table")
        axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
        nodes = [
            helper.make_node("Gather", ["table", "history"], ["rows"], axis=0),  # (B, L, I)
            helper.make_node("ReduceSum", ["rows", "axes"], ["scores"], keepdims=0),
        ]
        inputs = [helper.make_tensor_value_info("history", TensorProto.INT64, ["B", "L"])]
        initializers = [table, axes]
    else:
        nodes = [helper.make_node("Gather", ["table", "user"], ["scores"], axis=0)]
        inputs = [helper.make_tensor_value_info("user", TensorProto.INT64, ["B"])]
        initializers = [numpy_helper.from_array(USER_TABLE, "table")]
    output = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["B", len(ITEMS)])
    graph = helper.make_graph(nodes, f"tiny-{kind}", inputs, [output], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(params=["history", "user"])
def tiny(request: pytest.FixtureRequest, tmp_path: Path) -> Artifact:
    kind = str(request.param)
    onnx.save(_graph(kind), str(tmp_path / ONNX_FILE))
    np.save(tmp_path / "item_vectors.npy", np.eye(len(ITEMS), dtype=np.float32))
    config = {
        "family": f"tiny-{kind}",
        "version": 7,
        "input_kinds": [kind],
        "max_len": 4,
        "num_items": len(ITEMS),
        "num_users": 2,
    }
    return Artifact(tmp_path, config, ["u1", "u2"], list(ITEMS), POPULARITY.copy())


def _history_model(tiny: Artifact) -> bool:
    return tiny.input_kinds == ("history",)


class Shelf:
    """A catalogue that lets through the items named, with a warning to pass on, and holds
    the ``unavailable`` ones back from every list."""

    def __init__(
        self,
        passing: Sequence[str] = ITEMS,
        warnings: Sequence[str] = (),
        unavailable: Sequence[str] = (),
    ) -> None:
        self.titles = [f"Title {i}" for i in ITEMS]
        self.passing = set(passing)
        self.warnings = list(warnings)
        self.unavailable = np.asarray([ITEMS.index(i) for i in unavailable], dtype=np.int64)

    def mask(self, filters: Filters) -> tuple[npt.NDArray[np.bool_] | None, list[str]]:
        return np.array([i in self.passing for i in ITEMS]), self.warnings


def test_ranking_top_columns_breaks_ties_by_column_and_drops_excluded() -> None:
    scores = np.array([1, 3, 3, -np.inf, 3, 0], dtype=np.float32)
    assert ranking.top_columns(scores, 2).tolist() == [1, 2]
    assert ranking.top_columns(scores, 3).tolist() == [1, 2, 4]
    assert ranking.top_columns(scores, 10).tolist() == [1, 2, 4, 0, 5]
    assert ranking.top_columns(scores, 0).tolist() == []
    rng = np.random.default_rng(0)
    for _ in range(300):
        row = rng.integers(0, 4, int(rng.integers(1, 60))).astype(np.float32)
        row[rng.random(len(row)) < 0.2] = -np.inf
        k = int(rng.integers(1, 70))
        expected = np.argsort(-row, kind="stable")
        expected = expected[np.isfinite(row[expected])][:k]
        assert ranking.top_columns(row, k).tolist() == expected.tolist()


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(1, 6000),
    k=st.integers(1, 80),
    levels=st.sampled_from([3, 50, 10_000]),
    excluded=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31),
)
def test_ranking_top_columns_of_long_rows_equal_a_stable_sort(
    size: int, k: int, levels: int, excluded: float, seed: int
) -> None:
    """The block-maxima pool of long rows changes nothing: ties, -inf and short rows too."""
    rng = np.random.default_rng(seed)
    row = rng.integers(0, levels, size).astype(np.float32)
    row[rng.random(size) < excluded] = -np.inf
    expected = np.argsort(-row, kind="stable")
    expected = expected[np.isfinite(row[expected])][:k]
    assert ranking.top_columns(row, k).tolist() == expected.tolist()


def test_ranking_excludes_seen_items_unless_asked_not_to(tiny: Artifact) -> None:
    if _history_model(tiny):
        # a + c: [1, 7, 4, 12, 4, 2]
        seen = ranking.recommend(tiny, ["a", "c"], k=3)
        assert seen.item_ids == ["d", "b", "e"] and seen.scores == [12.0, 7.0, 4.0]
        kept = ranking.recommend(tiny, ["a", "c"], k=3, exclude_seen=False)
        assert kept.item_ids == ["d", "b", "c"]  # c and e tie at 4: the lower column first
    else:
        seen = ranking.recommend(tiny, ["f", "d"], user_id="u1", k=3)
        assert seen.item_ids == ["e", "c", "b"] and seen.scores == [5.0, 3.0, 2.0]
        kept = ranking.recommend(tiny, ["f", "d"], user_id="u1", k=3, exclude_seen=False)
        assert kept.item_ids == ["f", "e", "d"]
    assert seen.fallback is None and seen.model_version == 7


def test_ranking_exclude_items_is_hard_and_may_leave_a_short_list(tiny: Artifact) -> None:
    history, user = (["a"], None) if _history_model(tiny) else (["a"], "u2")
    filters = Filters(exclude_items=("b", "c", "nope"))
    out = ranking.recommend(tiny, history, user_id=user, k=10, filters=filters)
    assert out.item_ids == ["d", "e", "f"]
    assert out.backfilled == 0 and all(item.matches_filters for item in out.items)
    shelf = Shelf(passing=["b"])
    soft = Filters(include_genres=("x",), exclude_items=("b", "d"))
    backfilled = ranking.recommend(tiny, history, user_id=user, k=10, filters=soft, catalogue=shelf)
    assert backfilled.item_ids == ["c", "e", "f"] and backfilled.backfilled == 3


def test_ranking_unavailable_items_are_never_returned_nor_backfilled(tiny: Artifact) -> None:
    shelf = Shelf(passing=["b", "c"], unavailable=["c", "e"])
    history, user = (["a"], None) if _history_model(tiny) else (["a"], "u2")
    out = ranking.recommend(tiny, history, user_id=user, k=10, catalogue=shelf)
    assert sorted(out.item_ids) == ["b", "d", "f"]
    soft = Filters(include_genres=("x",))
    filtered = ranking.recommend(tiny, history, user_id=user, k=10, filters=soft, catalogue=shelf)
    assert filtered.item_ids[0] == "b" and sorted(filtered.item_ids) == ["b", "d", "f"]
    cold = ranking.recommend(tiny, ["zz"], user_id="stranger", k=10, catalogue=shelf)
    assert cold.fallback == "popular" and sorted(cold.item_ids) == ["a", "b", "d", "f"]


def test_ranking_soft_filters_backfill_in_score_order_and_flag_it(tiny: Artifact) -> None:
    shelf = Shelf(passing=["e", "f"], warnings=["filters.include_genres: careful"])
    filters = Filters(include_genres=("x",))
    if _history_model(tiny):
        out = ranking.recommend(tiny, ["c"], k=4, filters=filters, catalogue=shelf)
        # c alone: [1, 2, -, 9, 2, 1]; e and f pass, then d and b fill in.
        assert out.item_ids == ["e", "f", "d", "b"]
    else:
        out = ranking.recommend(tiny, [], user_id="u2", k=4, filters=filters, catalogue=shelf)
        assert out.item_ids == ["e", "f", "a", "b"]
    assert [item.matches_filters for item in out.items] == [True, True, False, False]
    assert out.backfilled == 2 and out.warnings == ("filters.include_genres: careful",)
    assert [item.title for item in out.items] == [f"Title {i}" for i in out.item_ids]
    with pytest.raises(RecsysError, match="need a catalogue"):
        ranking.recommend(tiny, ["c"], user_id="u2", filters=filters)


def test_ranking_k_beyond_the_catalogue_gives_every_unseen_item(tiny: Artifact) -> None:
    out = ranking.recommend(tiny, ["a", "b"], user_id="u1", k=1000)
    assert sorted(out.item_ids) == ["c", "d", "e", "f"]
    with pytest.raises(RecsysError, match="k must be positive"):
        ranking.recommend(tiny, ["a"], k=0)


def test_ranking_cold_users_get_popularity_with_ties_in_column_order(tiny: Artifact) -> None:
    """Nothing personal: no known history item (history model), an unknown user (user
    model). Popularity [3, 2, 7, 3, 2, 3] ties a, d and f, then b and e."""
    cold = ranking.recommend(tiny, ["zz", "yy", "zz"], user_id="stranger", k=6)
    assert cold.fallback == "popular" and cold.unknown_items == ("yy", "zz")
    assert cold.item_ids == ["c", "a", "d", "f", "b", "e"]
    assert cold.scores == [7.0, 3.0, 3.0, 3.0, 2.0, 2.0]
    if _history_model(tiny):
        # A user the model never saw is personal through the history.
        assert ranking.recommend(tiny, ["a"], user_id="stranger").fallback is None
    else:
        # A user model knows no new user, whatever the history: popularity without it.
        late = ranking.recommend(tiny, ["c", "d"], user_id="stranger", k=3)
        assert late.fallback == "popular" and late.item_ids == ["a", "f", "b"]
        assert ranking.recommend(tiny, [], user_id="u1").fallback is None


def test_ranking_explanations_name_the_closest_history_items(tiny: Artifact) -> None:
    out = ranking.recommend(tiny, ["a", "c"], user_id="u1", k=6, exclude_seen=False, explain=True)
    by_item = {item.item_id: item.because for item in out.items}
    # Unit item vectors: an item is closest to itself and orthogonal to the others.
    assert by_item["a"] == (Because("a", None, 1.0), Because("c", None, 0.0))
    assert by_item["c"] == (Because("c", None, 1.0), Because("a", None, 0.0))
    assert by_item["d"] == (Because("a", None, 0.0), Because("c", None, 0.0))
    plain = ranking.recommend(tiny, ["a", "c"], user_id="u1", k=6)
    assert all(item.because is None for item in plain.items)
    cold = ranking.recommend(tiny, [], user_id="stranger", k=2, explain=True)
    assert [item.because for item in cold.items] == [(), ()]


def test_ranking_similar_items_rank_by_cosine_without_the_item_itself(tiny: Artifact) -> None:
    tiny.__dict__["unit_vectors"] = np.array(
        [[1, 0], [0.8, 0.6], [0, 1], [-1, 0], [0.6, 0.8], [0.6, -0.8]], dtype=np.float32
    )  # a, b, c, d, e, f (unit length)
    out = ranking.similar_items(tiny, 0, 3, catalogue=Shelf(unavailable=["b"]))
    assert out.item_ids == ["e", "f", "c"] and out.scores == pytest.approx([0.6, 0.6, 0.0])
    assert [item.title for item in out.items] == ["Title e", "Title f", "Title c"]
    filtered = ranking.similar_items(
        tiny, 0, 2, filters=Filters(include_genres=("x",)), catalogue=Shelf(passing=["c"])
    )
    assert filtered.item_ids == ["c", "b"] and filtered.backfilled == 1
    tiny.__dict__["unit_vectors"] = None
    with pytest.raises(RecsysError, match="no item representations"):
        ranking.similar_items(tiny, 0, 3)


def test_ranking_many_requests_share_one_run_and_each_equals_its_own(tiny: Artifact) -> None:
    requests = [
        Request(["a", "c"], user_id="u1", k=3),
        Request([], user_id="stranger", k=2),
        Request(["b", "zz"], user_id="u2", k=4, exclude_seen=False),
    ]
    together = ranking.recommend_many(tiny, requests)
    for request, answer in zip(requests, together, strict=True):
        alone = ranking.recommend(
            tiny,
            request.history,
            user_id=request.user_id,
            k=request.k,
            exclude_seen=request.exclude_seen,
        )
        assert answer == alone


def test_ranking_rank_rows_follows_the_same_rules_as_recommend(tiny: Artifact) -> None:
    """The batch's vectorised path: TopK in the graph, cold rows, seen items removed."""
    histories = [["a", "c"], [], ["b"], ["c", "d", "e", "f"]]
    users = ["u1", "stranger", "u2", "stranger"]
    knowns = [tiny.history_indices(h)[0] for h in histories]
    counts = np.array([len(k) for k in knowns], dtype=np.int64)
    window = np.zeros((len(knowns), tiny.max_len), dtype=np.int64)
    for n, known in enumerate(knowns):
        window[n, tiny.max_len - len(known) :] = known
    columns, scores, personal = ranking.rank_rows(
        tiny,
        window,
        ranking.user_indices(tiny, users),
        counts,
        np.concatenate(knowns),
        k=3,
    )
    for n, (history, user) in enumerate(zip(histories, users, strict=True)):
        one = ranking.recommend(tiny, history, user_id=user, k=3)
        finite = np.isfinite(scores[n])
        assert [ITEMS[c] for c in columns[n][finite]] == one.item_ids
        assert scores[n][finite].tolist() == one.scores
        assert bool(personal[n]) == (one.fallback is None)
    assert np.isneginf(scores[3, -1])  # two unseen items for k = 3


def test_ranking_score_items_answers_the_asked_items_in_order(tiny: Artifact) -> None:
    out = ranking.score_items(tiny, [], ["f", "nope", "c"], user_id="stranger")
    assert out.fallback == "popular" and out.unknown_items == ("nope",)
    assert [(s.item_id, s.score) for s in out.scores] == [("f", 3.0), ("c", 7.0)]


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Home, dict[str, int]]:
    """The serving tests' home with a NeuMF version and a SASRec served through its item
    index too, then events the models never saw: a user of new items only (cold-1) and a new
    user of known items (late-1)."""
    home = make_home(tmp_path_factory.mktemp("ranking") / "home")
    versions = {
        "sasrec": home.champion,
        "neumf": home.register("neumf"),
        "sasrec-index": home.register("sasrec", ann_min_items=1),
    }
    record_events(home.engine, [Event("cold-1", "new-item-1"), Event("cold-1", "new-item-2")])
    record_events(
        home.engine,
        [Event("late-1", item, occurred_at_ms=n) for n, item in enumerate(["i3", "i5", "i8"])],
    )
    return home, versions


def _batch_lists(home: Home) -> dict[str, list[tuple[str, float]]]:
    with home.engine.connect() as conn:
        rows = conn.execute(
            select(recommendations_table).order_by(
                recommendations_table.c.user_id, recommendations_table.c.rank
            )
        ).all()
    lists: dict[str, list[tuple[str, float]]] = {}
    for row in rows:
        lists.setdefault(row.user_id, []).append((row.item_id, row.score))
    return lists


@pytest.mark.parametrize("family", ["sasrec", "neumf", "sasrec-index"])
def test_ranking_cli_batch_and_api_agree_on_the_same_users(
    two_models: tuple[Home, dict[str, int]], family: str
) -> None:
    """The CLI's function, the batch flow's library call and the API's scorer give the same
    items in the same order (scores within float noise) for warm and cold users."""
    home, versions = two_models
    version = versions[family]
    artifact = registry.load_artifact(home.engine, version)
    assert (artifact.retrieval is not None) == family.endswith("-index")
    # SASRec's batch cuts each batch's window to its longest history (recsys.batch).
    assert artifact.padding_invariant == family.startswith("sasrec")
    scorer = Scorer(home.engine)
    scorer.reload(version)
    k = 30  # deep enough into the popularity list to meet its ties
    batch_recommend(home.engine, artifact, k=k)
    batch = _batch_lists(home)
    # cold-1 knows no item the model knows; late-1 is a user the model never saw.
    cold = {"cold-1", "late-1"} if family == "neumf" else {"cold-1"}
    for user_id in ["u1", "u7", "u42", "cold-1", "late-1"]:
        history = user_history(home.engine, user_id) or []
        cli = retrieval.recommend(artifact, history, user_id=user_id, k=k)
        api = scorer.recommend(user_id, k=k)
        assert (cli.fallback == "popular") == (user_id in cold), (family, user_id)
        assert api.fallback == cli.fallback and api.known_user is True
        assert api.item_ids == cli.item_ids == [item for item, _ in batch[user_id]], user_id
        assert len(cli.item_ids) >= 10 and not set(cli.item_ids) & set(history)
        for scores in (api.scores, [score for _, score in batch[user_id]]):
            assert scores == pytest.approx(cli.scores, abs=1e-5)
