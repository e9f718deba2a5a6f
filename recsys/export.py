"""ONNX export, ``onnx.checker``, torch-vs-onnxruntime parity, and writing a version's artifact.

The exporter is chosen explicitly: TorchScript tracing (``dynamo=False``), which needs no
``onnxscript`` and handles every model in the zoo. The graph takes the model's input kinds
(``history`` int64 (B, L), ``user`` int64 (B,)) with a dynamic batch (and length) and returns
``scores`` float32 (B, I). Parity is measured on real evaluation batches of sizes other than
the export example's.
"""

from __future__ import annotations

import dataclasses
import logging
import typing
import warnings
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn
from torch.jit._trace import TracerWarning

from recsys import __version__
from recsys.artifacts import (
    CONFIG_FILE,
    EVALUATION_FILE,
    ID_MAPS_FILE,
    ITEM_VECTORS_FILE,
    METRICS_FILE,
    ONNX_FILE,
    POPULARITY_FILE,
    REPORT_FILE,
    WEIGHTS_FILE,
    read_json,
    verify,
    write_json,
    write_manifest,
)
from recsys.config import get_settings
from recsys.data.features import SideInfo
from recsys.data.splits import EvalSet, left_padded
from recsys.encoder import RetrievalCheck, uses_index, write_retrieval
from recsys.errors import RecsysError
from recsys.models import build_model, spec
from recsys.models.base import Query, Recommender
from recsys.training import EVAL_MAX_LEN

if typing.TYPE_CHECKING:
    from recsys.experiment import Outcome

logger = logging.getLogger(__name__)

OPSET = 17
PARITY_ATOL = 1e-4
# Real batches checked for parity; the export example has EXAMPLE_BATCH rows.
PARITY_BATCH_SIZES = (37, 256)
EXAMPLE_BATCH = 2
EXPORTER = "torch.onnx.export(dynamo=False) (TorchScript)"


class ScoreGraph(nn.Module):
    """What gets exported: the model's input kinds, in order, -> scores (B, I)."""

    def __init__(self, model: Recommender) -> None:
        super().__init__()
        self.model = model
        self.kinds = model.input_kinds

    def forward(self, *inputs: Tensor) -> Tensor:
        query = Query(**dict(zip(self.kinds, inputs, strict=True)))
        return self.model.score(query)


@dataclass(frozen=True)
class Parity:
    """Torch vs onnxruntime on real batches: the largest absolute difference and top-10 agreement.

    ``top10_agreement`` is the share of rows whose onnxruntime top-10 items are all in torch's
    top-10, ties within ``atol`` of torch's 10th score allowed.
    """

    passed: bool
    max_abs_diff: float | None
    top10_agreement: float | None
    batches: list[list[int]]
    atol: float
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ExportedArtifact:
    folder: Path
    onnx_sha256: str
    opset: int
    parity: Parity
    files: dict[str, str] = field(default_factory=dict)
    retrieval: RetrievalCheck | None = None  # the item index's checks, when it has one


def example_inputs(model: Recommender, batch_size: int = EXAMPLE_BATCH) -> tuple[Tensor, ...]:
    query = model.example_query(batch_size=batch_size)
    return tuple(getattr(query, kind) for kind in model.input_kinds)


def export_onnx(
    model: Recommender, path: Path, *, metadata: dict[str, str], opset: int = OPSET
) -> None:
    """Export ``model.score`` to ``path``, write ``metadata`` into the graph, run the checker.

    The graph is traced on the CPU: a model trained on another device is moved there first.
    """
    import onnx

    graph = ScoreGraph(model.cpu()).eval()
    kinds = list(model.input_kinds)
    axes: dict[str, dict[int, str]] = {"scores": {0: "batch"}}
    for kind in kinds:
        axes[kind] = {0: "batch", 1: "length"} if kind == "history" else {0: "batch"}
    model.eval()
    # Tracing warns about Python values it freezes; parity on other shapes is the real check.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message="The feature will be removed")
        warnings.filterwarnings("ignore", message=".*(Constant folding|batch_size other than 1)")
        torch.onnx.export(
            graph,
            example_inputs(model),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=kinds,
            output_names=["scores"],
            dynamic_axes=axes,
        )
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, metadata)
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path), full_check=True)


def onnx_metadata(path: Path) -> dict[str, str]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in proto.metadata_props}


def parity_batches(
    model: Recommender,
    eval_set: EvalSet,
    sizes: tuple[int, ...] = PARITY_BATCH_SIZES,
    seed: int = 0,
) -> list[dict[str, npt.NDArray[np.int64]]]:
    """Real query batches from an eval set, one per size (users drawn with replacement if few).

    The first batch is cut to its longest history so the length differs from the second.
    """
    if len(eval_set) == 0:
        raise RecsysError("parity needs evaluation users; the eval set is empty")
    rng = np.random.default_rng(seed)
    max_len = model.max_len or EVAL_MAX_LEN
    lengths = eval_set.history.lengths()
    batches = []
    for n, size in enumerate(sizes):
        which = rng.choice(len(eval_set), size=size, replace=size > len(eval_set))
        length = max_len
        if n == 0:
            length = int(max(1, min(max_len, lengths[which].max())))
        batch: dict[str, npt.NDArray[np.int64]] = {}
        if "history" in model.input_kinds:
            batch["history"] = left_padded(eval_set.history, which.astype(np.int64), length)
        if "user" in model.input_kinds:
            batch["user"] = eval_set.users[which].astype(np.int64)
        batches.append(batch)
    return batches


def check_parity(
    model: Recommender,
    path: Path,
    batches: list[dict[str, npt.NDArray[np.int64]]],
    atol: float = PARITY_ATOL,
) -> Parity:
    """Score every batch with torch and onnxruntime; pass when within ``atol`` and top-10 agree."""
    import onnxruntime as ort

    shapes = [list(next(iter(b.values())).shape) for b in batches]
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        return Parity(False, None, None, shapes, atol, f"onnxruntime cannot load the graph: {exc}")
    worst, agree, rows = 0.0, 0, 0
    model.eval()
    for shape, batch in zip(shapes, batches, strict=True):
        with torch.inference_mode():
            query = Query(**{kind: torch.from_numpy(v) for kind, v in batch.items()})
            expected = model.score(query).float().numpy()  # (B, I)
        try:
            (actual,) = session.run(["scores"], batch)
        except Exception as exc:
            reason = f"onnxruntime failed on a batch of shape {shape}: {exc}"
            return Parity(False, None, None, shapes, atol, reason.splitlines()[0])
        if actual.shape != expected.shape:
            reason = f"ONNX returned shape {actual.shape}, torch {expected.shape}"
            return Parity(False, None, None, shapes, atol, reason)
        diff = np.abs(actual.astype(np.float64) - expected)
        finite = np.isfinite(expected)
        if not np.array_equal(finite, np.isfinite(actual)):
            return Parity(False, None, None, shapes, atol, "ONNX and torch disagree on -inf/nan")
        worst = max(worst, float(diff[finite].max(initial=0.0)))
        agree += _top10_agreement(expected, actual, atol)
        rows += len(expected)
    share = agree / rows
    reasons = []
    if worst > atol:
        reasons.append(f"max |onnx - torch| = {worst:.3g} exceeds {atol:g}")
    if agree < rows:
        reasons.append(f"top-10 lists differ for {rows - agree} of {rows} rows")
    return Parity(not reasons, worst, share, shapes, atol, "; ".join(reasons) or None)


def _top10_agreement(expected: npt.NDArray[Any], actual: npt.NDArray[Any], atol: float) -> int:
    k = min(10, expected.shape[1])
    top_actual = np.argpartition(-actual, k - 1, axis=1)[:, :k]  # (B, K)
    kth = -np.partition(-expected, k - 1, axis=1)[:, k - 1 : k]  # (B, 1) torch's k-th score
    picked = np.take_along_axis(expected, top_actual, axis=1)
    return int((picked >= kth - atol).all(axis=1).sum())


def write_artifact(
    outcome: Outcome,
    folder: Path,
    *,
    version: int,
    code_version: str,
    check: bool = True,
    ann_min_items: int | None = None,
) -> ExportedArtifact:
    """Export ``outcome.model`` to ``folder`` with everything needed to trust and reload it.

    Files: model.onnx (with metadata), weights.npz, config.json, id_maps.json,
    popularity.json, item_vectors.npy (similar items, explanations), metrics.json,
    evaluation.json, report.md and manifest.json (sha256 of every file). A sequence model
    over at least ``ann_min_items`` items (``RECSYS_ANN_MIN_ITEMS`` when None) also gets
    encoder.onnx, output_vectors.npy and items.index (:mod:`recsys.encoder`). Parity (and the
    index's recall) is measured here; a failed check is returned, not raised, so the caller
    can record the version as unservable with the reason.
    """
    folder.mkdir(parents=True, exist_ok=False)
    model = outcome.model.cpu().eval()  # training returns it there; export and parity need it
    snapshot, data = outcome.snapshot, outcome.split
    max_len = model.max_len or EVAL_MAX_LEN
    metadata = {
        "family": outcome.name,
        "version": str(version),
        "input_kinds": ",".join(model.input_kinds),
        "max_len": str(max_len),
        "num_items": str(model.num_items),
        "num_users": str(model.num_users),
        "item_map_digest": snapshot.items.digest(),
        "user_map_digest": snapshot.users.digest(),
        "snapshot_digest": snapshot.descriptor.digest,
        "code_version": code_version,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    onnx_path = folder / ONNX_FILE
    export_onnx(model, onnx_path, metadata=metadata)
    batches = parity_batches(model, data.test) if check else []
    parity = (
        check_parity(model, onnx_path, batches)
        if check
        else Parity(False, None, None, [], PARITY_ATOL, "parity not checked")
    )
    logger.info("exported %s v%d: parity %s", outcome.name, version, parity)
    min_items = get_settings().ann_min_items if ann_min_items is None else ann_min_items
    retrieval = None
    if check and uses_index(model, min_items):
        retrieval = write_retrieval(
            model,
            folder,
            batches,
            data.test,
            data.valid,
            metadata=metadata,
            opset=OPSET,
            atol=PARITY_ATOL,
        )
        logger.info("%s v%d: item index %s", outcome.name, version, retrieval)

    state = {name: tensor.detach().cpu().numpy() for name, tensor in model.state_dict().items()}
    with (folder / WEIGHTS_FILE).open("wb") as handle:
        np.savez(handle, **state)  # type: ignore[arg-type]
    side_names = {
        "user": list(getattr(model, "user_feature_names", ())),
        "item": list(getattr(model, "item_feature_names", ())),
    }
    write_json(
        folder / CONFIG_FILE,
        {
            **metadata,
            "version": version,
            "input_kinds": list(model.input_kinds),
            "max_len": max_len,
            # Left padding changes none of its scores: a batch may cut the window to its
            # longest history (recsys.batch).
            "padding_invariant": bool(model.padding_invariant),
            "num_items": model.num_items,
            "num_users": model.num_users,
            "params": asdict(getattr(model, "config", outcome.model_config)),
            "train_config": asdict(outcome.train_config),
            "protocol": data.protocol,
            "opset": OPSET,
            "exporter": EXPORTER,
            "recsys_version": __version__,
            "side_feature_names": side_names,
            "retrieval": None if retrieval is None else retrieval.index,
        },
    )
    write_json(
        folder / ID_MAPS_FILE,
        {
            "users": snapshot.users.to_list(),
            "items": snapshot.items.to_list(),
            "user_digest": snapshot.users.digest(),
            "item_digest": snapshot.items.digest(),
        },
    )
    vectors = model.item_vectors()
    with (folder / ITEM_VECTORS_FILE).open("wb") as handle:
        np.save(
            handle,
            np.zeros((model.num_items, 0), np.float32)
            if vectors is None
            else vectors.float().cpu().numpy(),
            allow_pickle=False,
        )
    counts = np.bincount(data.train.item_idx, minlength=data.num_items + 1)[1:]
    write_json(folder / POPULARITY_FILE, {"counts": counts.astype(int).tolist()})
    summary = outcome.to_dict()
    write_json(
        folder / METRICS_FILE,
        {
            "protocol": data.protocol,
            "evaluated_users": summary["evaluated_users"],
            "metrics": summary["metrics"],
        },
    )
    write_json(
        folder / EVALUATION_FILE,
        {"training": summary, "test": outcome.test.to_dict(per_user=True)},
    )
    report = evaluation_report(outcome, version, parity, retrieval)
    (folder / REPORT_FILE).write_text(report, "utf-8")
    files = write_manifest(folder)
    return ExportedArtifact(folder, files[ONNX_FILE], OPSET, parity, files, retrieval)


def evaluation_report(
    outcome: Outcome, version: int, parity: Parity, retrieval: RetrievalCheck | None = None
) -> str:
    """The version's evaluation report in markdown: data, split, training, metrics, parity."""
    summary = outcome.to_dict()
    snap = summary["snapshot"]
    lines = [
        f"# {outcome.name} v{version}",
        "",
        "## Data",
        "",
        f"- snapshot {snap['digest'][:16]} ({snap['dialect']}, extracted {snap['extracted_at']}):"
        f" {snap['num_interactions']:,} interactions, {snap['num_users']:,} users, "
        f"{snap['num_items']:,} items",
        f"- split: {summary['protocol']}, {summary['evaluated_users']:,} test users",
        "",
        "## Training",
        "",
        f"- epochs {summary['epochs']} (best {summary['best_epoch']}, stopped: "
        f"{summary['stopped']}), {summary['train_seconds']:.1f} s, "
        f"{summary['seconds_to_best']:.1f} s to best",
        f"- params: `{summary['params']}`",
        "",
        "## Test metrics (95% bootstrap CI over users)",
        "",
        "| metric | value | 95% CI |",
        "|---|---:|---|",
    ]
    for metric, stats in summary["metrics"].items():
        lines.append(
            f"| {metric} | {stats['value']:.4f} | [{stats['ci_low']:.4f}, {stats['ci_high']:.4f}] |"
        )
    diff = "n/a" if parity.max_abs_diff is None else f"{parity.max_abs_diff:.3g}"
    lines += [
        "",
        "## ONNX export",
        "",
        f"- exporter: {EXPORTER}, opset {OPSET}",
        f"- parity: {'passed' if parity.passed else 'FAILED'}; max |onnx - torch| = {diff} "
        f"(tolerance {parity.atol:g}) on batches {parity.batches}",
    ]
    if parity.reason:
        lines.append(f"- reason: {parity.reason}")
    if retrieval is not None:
        lines += retrieval.report_lines()
    lines += ["", "## Data quality", "", outcome.quality.to_markdown(), ""]
    return "\n".join(lines)


def load_model(folder: Path, *, onnx_sha256: str | None = None) -> Recommender:
    """Rebuild the torch model of an artifact from its config and weights (no unpickling)."""
    verify(folder, onnx_sha256)
    config = read_json(folder / CONFIG_FILE)
    family = config["family"]
    with np.load(folder / WEIGHTS_FILE, allow_pickle=False) as weights:
        state = {name: torch.from_numpy(weights[name].copy()) for name in weights.files}
    model_config = _config_from_dict(spec(family).config, config["params"])
    side = None
    if "user_features" in state and "item_features" in state:
        names = config.get("side_feature_names", {})
        side = SideInfo(
            state["user_features"],
            state["item_features"],
            tuple(names.get("user", ())),
            tuple(names.get("item", ())),
        )
    model = build_model(
        family, config["num_users"], config["num_items"], side=side, config=model_config
    )
    model.load_state_dict(state)
    return model.eval()


def _config_from_dict(cls: type[Any], values: dict[str, Any]) -> Any:
    """A frozen config dataclass from JSON (lists become tuples where the field is a tuple)."""
    hints = typing.get_type_hints(cls)
    converted = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value = values[f.name]
        if isinstance(value, list) and "tuple" in str(hints[f.name]):
            value = tuple(value)
        converted[f.name] = value
    return cls(**converted)
