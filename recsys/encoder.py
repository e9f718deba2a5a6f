"""A sequence model's user encoder and item index, exported beside its scoring graph and checked.

When the catalogue reaches ``RECSYS_ANN_MIN_ITEMS`` items, a model whose scores are a product
with an item table (``output_vectors``) is also exported as ``encoder.onnx`` (history -> user
vectors (B, D)) with those item vectors and an item index over them (:mod:`recsys.ann`).
Two checks are recorded with the version's parity, and either failing makes the version
unservable: the encoder's vectors times the item vectors give the scoring graph's scores on
the parity batches (within the parity tolerance), and the index finds at least 95% of the
exact top-10 of the test users (recall@10, their histories through the encoder).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn
from torch.jit._trace import TracerWarning

from recsys.ann import (
    MAX_PROBES,
    MIN_RECALL,
    RECALL_K,
    TUNE_RECALL,
    IndexParams,
    ItemIndex,
    exact_top,
    recall,
)
from recsys.artifacts import (
    ENCODER_FILE,
    ENCODER_OUTPUT,
    INDEX_FILE,
    ONNX_FILE,
    OUTPUT_VECTORS_FILE,
)
from recsys.data.splits import EvalSet, left_padded
from recsys.models.base import Query, Recommender

logger = logging.getLogger(__name__)

RECALL_USERS = 2000  # users the recall is measured on (a seeded sample when more)
ENCODE_BATCH = 256
PARITY_ROWS = 32  # rows compared at a time: (32, I) scores stay small at a million items


@dataclass(frozen=True)
class RetrievalCheck:
    """The encoder's parity with the scoring graph and the index's recall@10, as recorded."""

    passed: bool
    max_abs_diff: float | None
    recall_at_10: float | None
    users: int
    min_recall: float
    atol: float
    index: dict[str, Any] = field(default_factory=dict)
    build_seconds: float = 0.0
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def report_lines(self) -> list[str]:
        """The check's lines in a version's evaluation report."""
        found = "n/a" if self.recall_at_10 is None else f"{self.recall_at_10:.4f}"
        lines = [
            f"- item index ({self.index.get('library')}, {self.index.get('lists')} cells, "
            f"{self.index.get('probes')} probed, built in {self.build_seconds:.1f} s): "
            f"{'passed' if self.passed else 'FAILED'}; recall@10 {found} on {self.users} "
            f"test users (at least {self.min_recall:g})"
        ]
        return lines + ([f"- reason: {self.reason}"] if self.reason else [])


class EncoderGraph(nn.Module):
    """What gets exported: history (B, L) -> the user vectors (B, D) the scores are made of."""

    def __init__(self, model: Recommender) -> None:
        super().__init__()
        self.model = model

    def forward(self, history: Tensor) -> Tensor:
        return self.model.encode(Query(history=history))


def uses_index(model: Recommender, min_items: int) -> bool:
    """Whether ``model`` is served through an item index: a history model whose scores are a
    product with an item table, over a catalogue of at least ``min_items`` items."""
    return (
        model.input_kinds == ("history",)
        and model.num_items >= min_items
        and model.output_vectors() is not None
    )


def export_encoder(model: Recommender, path: Path, *, metadata: dict[str, str], opset: int) -> None:
    """Export ``model.encode`` to ``path`` (input ``history``, output ``vectors``), checked."""
    import onnx

    graph = EncoderGraph(model).eval()
    example = model.example_query(batch_size=2).history
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message="The feature will be removed")
        warnings.filterwarnings("ignore", message=".*(Constant folding|batch_size other than 1)")
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["history"],
            output_names=[ENCODER_OUTPUT],
            dynamic_axes={"history": {0: "batch", 1: "length"}, ENCODER_OUTPUT: {0: "batch"}},
        )
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {**metadata, "graph": "encoder"})
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path), full_check=True)


def write_retrieval(
    model: Recommender,
    folder: Path,
    batches: list[dict[str, npt.NDArray[np.int64]]],
    test: EvalSet,
    valid: EvalSet,
    *,
    metadata: dict[str, str],
    opset: int,
    atol: float,
    params: IndexParams | None = None,
    threads: int | None = None,
) -> RetrievalCheck:
    """Write the encoder, the item vectors and their index into ``folder`` and check them
    against the scoring graph already there (``model.onnx``).

    The index searches the fewest cells that find 99% of the exact top-10 of the validation
    users (:func:`tuned`); the recall recorded, which must reach 95%, is then measured on the
    test users."""
    vectors = model.output_vectors()
    assert vectors is not None, "uses_index() chooses the models written here"
    items = np.ascontiguousarray(vectors.float().cpu().numpy())  # (I, D)
    with (folder / OUTPUT_VECTORS_FILE).open("wb") as handle:
        np.save(handle, items, allow_pickle=False)
    export_encoder(model, folder / ENCODER_FILE, metadata=metadata, opset=opset)
    params = params or IndexParams.for_items(len(items))
    started = time.perf_counter()
    index = ItemIndex.build(items, params, threads=threads or os.cpu_count())
    encoder = _session(folder / ENCODER_FILE)
    index = tuned(index, items, encoded_users(encoder, valid, model.max_len or 1))
    seconds = time.perf_counter() - started
    index.save(folder / INDEX_FILE)
    logger.info("item index over %d items (%s) in %.1fs", len(items), params, seconds)
    return check_retrieval(
        folder, items, index, batches, test, max_len=model.max_len or 1, atol=atol, seconds=seconds
    )


def tuned(
    index: ItemIndex, items: npt.NDArray[np.float32], queries: npt.NDArray[np.float32]
) -> ItemIndex:
    """``index`` searching the fewest cells (its probes, doubled up to MAX_PROBES or every
    cell) that find TUNE_RECALL of the exact top-10 of ``queries``; the most when none does.
    Fewer cells, less work per request: each probe scans a cell's vectors."""
    if len(queries) == 0:
        return index
    truth = exact_top(items, queries, RECALL_K)
    while recall(index.search(queries, RECALL_K)[0], truth) < TUNE_RECALL:
        probes = min(2 * index.params.probes, MAX_PROBES, index.params.lists)
        if probes <= index.params.probes:
            break
        index = index.with_probes(probes)
    return index


def _session(path: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def check_retrieval(
    folder: Path,
    items: npt.NDArray[np.float32],
    index: ItemIndex,
    batches: list[dict[str, npt.NDArray[np.int64]]],
    test: EvalSet,
    *,
    max_len: int,
    atol: float,
    seconds: float = 0.0,
) -> RetrievalCheck:
    """Encoder parity on ``batches`` against the scoring graph, then recall@10 of ``index``
    against exact scoring for (a sample of) the test users."""

    def failed(reason: str, diff: float | None = None) -> RetrievalCheck:
        return RetrievalCheck(
            False, diff, None, 0, MIN_RECALL, atol, index.params.to_dict(), seconds, reason
        )

    try:
        encoder = _session(folder / ENCODER_FILE)
        scorer = _session(folder / ONNX_FILE)
    except Exception as exc:  # onnxruntime raises its own exception types
        return failed(f"onnxruntime cannot load the encoder: {exc}".splitlines()[0])
    worst = 0.0
    for batch in batches:
        for start in range(0, len(batch["history"]), PARITY_ROWS):
            history = batch["history"][start : start + PARITY_ROWS]
            (users,) = encoder.run([ENCODER_OUTPUT], {"history": history})
            (scores,) = scorer.run(["scores"], {"history": history})
            product = np.asarray(users, dtype=np.float32) @ items.T  # (b, I)
            if product.shape != scores.shape:
                return failed(f"encoder x items is {product.shape}, the graph's {scores.shape}")
            worst = max(worst, float(np.abs(product - scores).max(initial=0.0)))
    if not worst <= atol:
        return failed(f"max |encoder x items - graph| = {worst:.3g} exceeds {atol:g}", worst)

    queries = encoded_users(encoder, test, max_len)
    if len(queries) == 0:
        return failed("no test user has a history to measure the index's recall on", worst)
    found, _ = index.search(queries, RECALL_K)
    share = recall(found, exact_top(items, queries, RECALL_K))
    passed = share >= MIN_RECALL
    reason = None
    if not passed:
        reason = (
            f"item index recall@{RECALL_K} = {share:.3f} against exact scoring on "
            f"{len(queries)} test users, below {MIN_RECALL:g} (with {index.params.probes} of "
            f"{index.params.lists} cells searched); to serve this catalogue by scoring every "
            "item, set RECSYS_ANN_MIN_ITEMS above its size"
        )
    return RetrievalCheck(
        passed,
        worst,
        share,
        len(queries),
        MIN_RECALL,
        atol,
        index.params.to_dict(),
        seconds,
        reason,
    )


def encoded_users(
    encoder: Any, users: EvalSet, max_len: int, seed: int = 0
) -> npt.NDArray[np.float32]:
    """The encoder's vectors of the users with a history (at most RECALL_USERS), (U, D)."""
    rows = np.flatnonzero(users.history.lengths() > 0).astype(np.int64)
    if len(rows) > RECALL_USERS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, RECALL_USERS, replace=False))
    out = []
    for start in range(0, len(rows), ENCODE_BATCH):
        history = left_padded(users.history, rows[start : start + ENCODE_BATCH], max_len)
        (vectors,) = encoder.run([ENCODER_OUTPUT], {"history": history})
        out.append(np.asarray(vectors, dtype=np.float32))
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out)
