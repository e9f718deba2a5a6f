"""Model artifacts on disk: the folder layout, integrity checks and onnxruntime scoring.

A version's folder holds the ONNX graph, the weights (``.npz``), the config, the id maps,
the training popularity, the metrics and the evaluation report, plus a manifest of every
file's sha256; a sequence model over a large catalogue also carries its user encoder, the
item vectors it scores with and their nearest-neighbour index (:mod:`recsys.ann`). Nothing
in it needs unpickling. This module never imports torch: the ``recommend`` path and the
service load and score artifacts through it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from recsys.errors import RecsysError

if TYPE_CHECKING:
    from recsys.ann import ItemIndex

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
WEIGHTS_FILE = "weights.npz"
CONFIG_FILE = "config.json"
ID_MAPS_FILE = "id_maps.json"
POPULARITY_FILE = "popularity.json"
ITEM_VECTORS_FILE = "item_vectors.npy"
METRICS_FILE = "metrics.json"
EVALUATION_FILE = "evaluation.json"
REPORT_FILE = "report.md"
MANIFEST_FILE = "manifest.json"
ENCODER_FILE = "encoder.onnx"
OUTPUT_VECTORS_FILE = "output_vectors.npy"
INDEX_FILE = "items.index"
# Written before the manifest; the manifest then records a sha256 for each of them.
ARTIFACT_FILES = (
    ONNX_FILE,
    WEIGHTS_FILE,
    CONFIG_FILE,
    ID_MAPS_FILE,
    POPULARITY_FILE,
    ITEM_VECTORS_FILE,
    METRICS_FILE,
    EVALUATION_FILE,
    REPORT_FILE,
)
# Only in an artifact served through its item index (the config's ``retrieval`` says so).
RETRIEVAL_FILES = (ENCODER_FILE, OUTPUT_VECTORS_FILE, INDEX_FILE)
ENCODER_OUTPUT = "vectors"

FloatArray = npt.NDArray[np.float32]
Int64Array = npt.NDArray[np.int64]


class ArtifactIntegrityError(RecsysError):
    """An artifact file is missing or no longer matches the sha256 recorded for it."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: Path, data: Any) -> None:
    """Write JSON and fsync it: an artifact is only as durable as its slowest file."""
    with path.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, default=str)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ArtifactIntegrityError(f"artifact file missing: {path}") from exc
    except json.JSONDecodeError as exc:
        raise ArtifactIntegrityError(f"artifact file {path} is not valid JSON: {exc}") from exc


def write_manifest(folder: Path) -> dict[str, str]:
    """Record the sha256 of every artifact file in ``manifest.json``; returns the mapping."""
    missing = [name for name in ARTIFACT_FILES if not (folder / name).is_file()]
    if missing:
        raise ArtifactIntegrityError(f"artifact in {folder} lacks {', '.join(missing)}")
    names = [*ARTIFACT_FILES, *(n for n in RETRIEVAL_FILES if (folder / n).is_file())]
    hashes = {name: sha256_file(folder / name) for name in names}
    write_json(folder / MANIFEST_FILE, {"sha256": hashes})
    return hashes


def verify(folder: Path, onnx_sha256: str | None = None) -> None:
    """Refuse an artifact whose files do not match the manifest (and the registry's hash).

    ``onnx_sha256`` is the hash the registry recorded; it guards against a replaced
    manifest as well as a replaced graph.
    """
    if not folder.is_dir():
        raise ArtifactIntegrityError(f"artifact folder {folder} does not exist")
    recorded: dict[str, str] = read_json(folder / MANIFEST_FILE).get("sha256", {})
    if onnx_sha256 is not None and recorded.get(ONNX_FILE) != onnx_sha256:
        raise ArtifactIntegrityError(
            f"{folder / MANIFEST_FILE} does not match the registry's ONNX sha256 {onnx_sha256}"
        )
    optional = [name for name in RETRIEVAL_FILES if name in recorded]
    for name in (*ARTIFACT_FILES, *optional):
        path = folder / name
        if name not in recorded:
            raise ArtifactIntegrityError(f"{folder / MANIFEST_FILE} has no sha256 for {name}")
        if not path.is_file():
            raise ArtifactIntegrityError(f"artifact file missing: {path}")
        actual = sha256_file(path)
        if actual != recorded[name]:
            raise ArtifactIntegrityError(
                f"{path} does not match its recorded sha256 (expected {recorded[name][:12]}..., "
                f"found {actual[:12]}...): the file was changed after registration; "
                "refusing to load it"
            )


@dataclass
class Artifact:
    """A loaded, verified artifact: config, id maps, popularity and an onnxruntime session.

    Score matrices follow the model contract: column ``j`` is item index ``j + 1``.
    """

    folder: Path
    config: dict[str, Any]
    user_ids: list[str]
    item_ids: list[str]
    popularity: FloatArray  # (I,) training events per item
    threads: int | None = None
    _session: Any = field(default=None, repr=False)

    @classmethod
    def load(
        cls, folder: Path, *, onnx_sha256: str | None = None, threads: int | None = None
    ) -> Artifact:
        """Verify every file against the manifest (and ``onnx_sha256``), then read it."""
        folder = Path(folder)
        verify(folder, onnx_sha256)
        config = read_json(folder / CONFIG_FILE)
        maps = read_json(folder / ID_MAPS_FILE)
        popularity = np.asarray(read_json(folder / POPULARITY_FILE)["counts"], dtype=np.float32)
        artifact = cls(
            folder=folder,
            config=config,
            user_ids=[str(u) for u in maps["users"]],
            item_ids=[str(i) for i in maps["items"]],
            popularity=popularity,
            threads=threads,
        )
        if len(artifact.item_ids) != artifact.num_items or len(popularity) != artifact.num_items:
            raise ArtifactIntegrityError(f"{folder}: id maps disagree with the config")
        if artifact.retrieval is not None:
            unlisted = [name for name in RETRIEVAL_FILES if artifact.manifest_sha256(name) is None]
            if unlisted:
                raise ArtifactIntegrityError(
                    f"{folder}: served through an item index but the manifest lacks "
                    f"{', '.join(unlisted)}"
                )
        return artifact

    @property
    def files(self) -> tuple[str, ...]:
        """The artifact's files (the manifest aside)."""
        present = [name for name in RETRIEVAL_FILES if (self.folder / name).is_file()]
        return (*ARTIFACT_FILES, *present)

    def manifest_sha256(self, name: str) -> str | None:
        """The sha256 the manifest records for one of the artifact's files."""
        recorded: dict[str, str] = read_json(self.folder / MANIFEST_FILE).get("sha256", {})
        return recorded.get(name)

    @property
    def family(self) -> str:
        return str(self.config["family"])

    @property
    def version(self) -> int:
        return int(self.config["version"])

    @property
    def input_kinds(self) -> tuple[str, ...]:
        return tuple(self.config["input_kinds"])

    @property
    def max_len(self) -> int:
        return int(self.config.get("max_len") or 200)

    @property
    def padding_invariant(self) -> bool:
        """Whether left padding leaves the scores unchanged (False for older artifacts)."""
        return bool(self.config.get("padding_invariant", False))

    @property
    def num_items(self) -> int:
        return int(self.config["num_items"])

    @property
    def num_users(self) -> int:
        return int(self.config["num_users"])

    @cached_property
    def item_index(self) -> dict[str, int]:
        return {item_id: idx for idx, item_id in enumerate(self.item_ids, start=1)}

    @cached_property
    def user_index(self) -> dict[str, int]:
        return {user_id: idx for idx, user_id in enumerate(self.user_ids, start=1)}

    @cached_property
    def popular_columns(self) -> Int64Array:
        """Columns by training popularity, most popular first; equal counts in column order."""
        order: Int64Array = np.argsort(-self.popularity, kind="stable").astype(np.int64)
        return order

    @cached_property
    def unit_vectors(self) -> FloatArray | None:
        """Item representations scaled to unit length, (I, D); None when the model has none."""
        vectors = np.load(self.folder / ITEM_VECTORS_FILE, allow_pickle=False)
        if vectors.ndim != 2 or vectors.shape[1] == 0:
            return None
        if vectors.shape[0] != self.num_items:
            raise ArtifactIntegrityError(f"{self.folder}: item vectors disagree with the config")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        unit: FloatArray = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
        return unit

    @property
    def retrieval(self) -> dict[str, Any] | None:
        """How the artifact's item index was built and checked; None when every request
        scores every item (a small catalogue, or a model whose scores are no product)."""
        value = self.config.get("retrieval")
        return dict(value) if value else None

    @property
    def session(self) -> Any:
        """The onnxruntime session, created on first use."""
        if self._session is None:
            self._session = self._new_session(str(self.folder / ONNX_FILE))
        return self._session

    def _new_session(self, graph: str | bytes) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    @cached_property
    def _encoder_session(self) -> Any:
        if self.retrieval is None:
            raise RecsysError(f"v{self.version} ({self.family}) has no item index")
        return self._new_session(str(self.folder / ENCODER_FILE))

    def encode(self, history: Int64Array) -> FloatArray:
        """User vectors (B, D) of left-padded histories (B, L): the encoder graph, which is
        the scoring graph without its product with :attr:`output_vectors`."""
        feeds = self._feeds(history, None)
        (vectors,) = self._encoder_session.run([ENCODER_OUTPUT], {"history": feeds["history"]})
        return np.asarray(vectors, dtype=np.float32)

    @cached_property
    def output_vectors(self) -> FloatArray:
        """The item vectors (I, D) the scores are inner products with, memory-mapped."""
        vectors: FloatArray = np.load(
            self.folder / OUTPUT_VECTORS_FILE, mmap_mode="r", allow_pickle=False
        )
        if vectors.ndim != 2 or vectors.shape[0] != self.num_items:
            raise ArtifactIntegrityError(f"{self.folder}: output vectors disagree with the config")
        return vectors

    @cached_property
    def index(self) -> ItemIndex:
        """The nearest-neighbour index over :attr:`output_vectors`, loaded on first use."""
        from recsys.ann import ItemIndex

        if self.retrieval is None:
            raise RecsysError(f"v{self.version} ({self.family}) has no item index")
        return ItemIndex.load(self.folder / INDEX_FILE, self.retrieval, threads=self.threads)

    def score(self, history: Int64Array | None, users: Int64Array | None) -> FloatArray:
        """Scores (B, I) for left-padded histories (B, L) and/or user indices (B,)."""
        (scores,) = self.session.run(["scores"], self._feeds(history, users))
        return np.asarray(scores, dtype=np.float32)

    def top(
        self, history: Int64Array | None, users: Int64Array | None, k: int
    ) -> tuple[FloatArray, Int64Array]:
        """The ``k`` best scores and their columns per row, best first: (B, k), (B, k).

        Runs the graph with a TopK node appended, so the (B, I) score matrix never leaves
        onnxruntime (batch scoring of large catalogues).
        """
        feeds = self._feeds(history, users)
        feeds["k"] = np.asarray([min(k, self.num_items)], dtype=np.int64)
        values, indices = self._top_session.run(["top_scores", "top_columns"], feeds)
        return np.asarray(values, dtype=np.float32), np.asarray(indices, dtype=np.int64)

    @cached_property
    def _top_session(self) -> Any:
        import onnx

        proto = onnx.load(str(self.folder / ONNX_FILE))
        graph = proto.graph
        graph.input.append(onnx.helper.make_tensor_value_info("k", onnx.TensorProto.INT64, [1]))
        graph.node.append(
            onnx.helper.make_node(
                "TopK", ["scores", "k"], ["top_scores", "top_columns"], axis=1, largest=1, sorted=1
            )
        )
        del graph.output[:]
        graph.output.extend(
            [
                onnx.helper.make_tensor_value_info("top_scores", onnx.TensorProto.FLOAT, None),
                onnx.helper.make_tensor_value_info("top_columns", onnx.TensorProto.INT64, None),
            ]
        )
        return self._new_session(proto.SerializeToString())

    def _feeds(self, history: Int64Array | None, users: Int64Array | None) -> dict[str, Any]:
        feeds: dict[str, Any] = {}
        if "history" in self.input_kinds:
            if history is None:
                raise RecsysError(f"{self.family} scores histories; none given")
            feeds["history"] = np.ascontiguousarray(history[:, -self.max_len :], dtype=np.int64)
            if feeds["history"].shape[1] == 0:
                feeds["history"] = np.zeros((len(history), 1), dtype=np.int64)
        if "user" in self.input_kinds:
            if users is None:
                raise RecsysError(f"{self.family} scores users; none given")
            feeds["user"] = np.ascontiguousarray(users, dtype=np.int64)
        return feeds

    def history_indices(self, item_ids: Sequence[str]) -> tuple[Int64Array, list[str]]:
        """Indices of the known items of a history (order kept) and the unknown ids."""
        index = self.item_index
        known = [index[i] for i in item_ids if i in index]
        unknown = [i for i in item_ids if i not in index]
        return np.asarray(known, dtype=np.int64), unknown
