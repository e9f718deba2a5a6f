"""The user encoder and item index of a sequence model: which models get one, the encoder's
parity with the scoring graph, and the recall check that makes a version unservable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from recsys.ann import MIN_RECALL, TUNE_RECALL, IndexParams, ItemIndex, exact_top, recall
from recsys.artifacts import ENCODER_FILE, ONNX_FILE
from recsys.data.splits import EvalSet, Ragged
from recsys.encoder import check_retrieval, encoded_users, export_encoder, tuned, uses_index
from recsys.export import OPSET, PARITY_ATOL, export_onnx
from recsys.models import MODELS, build_model
from recsys.models.base import Recommender

NUM_USERS, NUM_ITEMS, LENGTH = 40, 60, 12


def histories(rows: int, seed: int) -> np.ndarray:
    """Left-padded histories (rows, LENGTH), each with at least one item."""
    rng = np.random.default_rng(seed)
    out = rng.integers(1, NUM_ITEMS + 1, (rows, LENGTH))
    pads = rng.integers(0, LENGTH, rows)
    out[np.arange(LENGTH)[None, :] < pads[:, None]] = 0
    return out.astype(np.int64)


def eval_set(rows: int, seed: int) -> EvalSet:
    padded = histories(rows, seed)
    values = np.concatenate([row[row > 0] for row in padded]).astype(np.int32)
    groups = np.repeat(np.arange(rows), (padded > 0).sum(axis=1)).astype(np.int32)
    empty = Ragged(np.zeros(rows + 1, dtype=np.int64), np.zeros(0, dtype=np.int32))
    return EvalSet(
        np.arange(1, rows + 1, dtype=np.int32), Ragged.from_groups(groups, values, rows), empty
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Recommender, Path]:
    torch.manual_seed(0)
    model = build_model("sasrec", NUM_USERS, NUM_ITEMS).eval()
    folder = tmp_path_factory.mktemp("encoder")
    export_onnx(model, folder / ONNX_FILE, metadata={})
    export_encoder(model, folder / ENCODER_FILE, metadata={}, opset=OPSET)
    return model, folder


def items_of(model: Recommender) -> np.ndarray:
    vectors = model.output_vectors()
    assert vectors is not None
    return np.ascontiguousarray(vectors.numpy())


def test_only_sequence_models_over_large_catalogues_use_an_index() -> None:
    for name, spec in MODELS.items():
        model = build_model(name, NUM_USERS, NUM_ITEMS)
        expected = spec.model.input_kinds == ("history",) and model.output_vectors() is not None
        assert uses_index(model, NUM_ITEMS) is expected, name
        assert not uses_index(model, NUM_ITEMS + 1), name
    assert {n for n in MODELS if uses_index(build_model(n, 4, 9), 1)} == {
        "sasrec",
        "gru4rec",
        "caser",
    }


def test_encoder_times_item_vectors_is_the_graph_and_the_index_finds_the_top10(
    exported: tuple[Recommender, Path],
) -> None:
    model, folder = exported
    items = items_of(model)
    index = ItemIndex.build(items, IndexParams.for_items(NUM_ITEMS), threads=1)
    batches = [{"history": histories(37, 1)}, {"history": histories(70, 2)}]
    check = check_retrieval(
        folder, items, index, batches, eval_set(50, 3), max_len=LENGTH, atol=PARITY_ATOL
    )
    assert check.passed, check.reason
    assert check.max_abs_diff is not None and check.max_abs_diff <= PARITY_ATOL
    assert check.recall_at_10 == 1.0 and check.users == 50  # every cell probed: exact


def test_item_vectors_that_are_not_the_graphs_fail_the_parity(
    exported: tuple[Recommender, Path],
) -> None:
    model, folder = exported
    items = items_of(model).copy()
    items[7, :2] += [0.01, -0.01]  # one item's vector drifted from the one the graph uses
    index = ItemIndex.build(items, IndexParams.for_items(NUM_ITEMS), threads=1)
    check = check_retrieval(
        folder,
        items,
        index,
        [{"history": histories(37, 1)}],
        eval_set(20, 3),
        max_len=LENGTH,
        atol=PARITY_ATOL,
    )
    assert not check.passed and check.recall_at_10 is None
    assert check.reason is not None and "encoder x items - graph" in check.reason


def test_an_index_that_misses_the_top10_fails_the_recall_check(
    exported: tuple[Recommender, Path],
) -> None:
    model, folder = exported
    items = items_of(model)
    narrow = ItemIndex.build(items, IndexParams(lists=30, probes=1), threads=1)
    check = check_retrieval(
        folder,
        items,
        narrow,
        [{"history": histories(37, 1)}],
        eval_set(50, 3),
        max_len=LENGTH,
        atol=PARITY_ATOL,
    )
    assert not check.passed and check.recall_at_10 is not None
    assert check.recall_at_10 < MIN_RECALL
    assert (
        check.reason is not None and "recall@10" in check.reason and "50 test users" in check.reason
    )


def test_registration_searches_more_cells_until_the_validation_users_top10_is_found(
    exported: tuple[Recommender, Path],
) -> None:
    model, folder = exported
    items = items_of(model)
    narrow = ItemIndex.build(items, IndexParams(lists=30, probes=1), threads=1)
    encoder = ort.InferenceSession(str(folder / ENCODER_FILE), providers=["CPUExecutionProvider"])
    queries = encoded_users(encoder, eval_set(50, 4), LENGTH)
    assert queries.shape == (50, items.shape[1])
    wider = tuned(narrow, items, queries)
    assert 1 < wider.params.probes <= 30 and wider.params.lists == 30
    truth = exact_top(items, queries, 10)
    # The tuning bar sits above the serving floor, which the test users' recall must keep.
    assert TUNE_RECALL > MIN_RECALL
    assert recall(wider.search(queries, 10)[0], truth) >= TUNE_RECALL
    fewer = wider.params.probes // 2  # the one before it was not enough
    assert recall(narrow.with_probes(fewer).search(queries, 10)[0], truth) < TUNE_RECALL
