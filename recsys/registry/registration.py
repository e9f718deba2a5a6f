"""Registering a trained model as a new version, atomically for readers.

A version is reserved (``pending``, invisible), its artifact written into a ``.partial``
folder and renamed into place, and only then made visible in one transaction (``ready``, or
``unservable`` when the ONNX graph failed parity, or its item index the recall check). A
registration that raises marks its row ``failed`` and removes its folder; one that dies
leaves an invisible ``pending`` row and a ``.partial`` folder that
:func:`recsys.registry.housekeeping.sweep` clears.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, insert, update

from recsys.db.schema import model_versions_table
from recsys.registry.store import (
    MODELS_FOLDER,
    SERVABLE,
    ModelRecord,
    code_version,
    get_version,
    now,
)

if TYPE_CHECKING:
    from recsys.experiment import Outcome

logger = logging.getLogger(__name__)


def artifact_folder(artifacts_dir: Path, version: int, family: str) -> Path:
    return artifacts_dir / MODELS_FOLDER / f"v{version:06d}-{family}"


def partial_folder(artifacts_dir: Path, version: int, family: str) -> Path:
    """Where an artifact is written before it is complete: hidden, and named as partial."""
    return artifacts_dir / MODELS_FOLDER / f".v{version:06d}-{family}.partial"


def register(
    engine: Engine,
    outcome: Outcome,
    *,
    artifacts_dir: Path,
    flow_run_id: str | None = None,
    ann_min_items: int | None = None,
) -> ModelRecord:
    """Export ``outcome`` to ONNX with parity, write its artifact and register the version.

    A sequence model over at least ``ann_min_items`` items (``RECSYS_ANN_MIN_ITEMS`` when
    None) also gets its item index, whose recall@10 against exact scoring is recorded with
    the parity (``parity["retrieval"]``); under 0.95 the version is unservable.
    Atomic for readers: the version becomes visible only in the final transaction, after the
    artifact folder is complete and in place. Returns the record (``ready`` or
    ``unservable``); raises after marking the row ``failed`` if anything goes wrong.
    """
    from recsys.export import write_artifact

    version = _reserve(engine, outcome.name, flow_run_id)
    partial = partial_folder(artifacts_dir, version, outcome.name)
    final = artifact_folder(artifacts_dir, version, outcome.name)
    try:
        exported = write_artifact(
            outcome,
            partial,
            version=version,
            code_version=code_version(),
            ann_min_items=ann_min_items,
        )
        partial.rename(final)
        parity = exported.parity.to_dict()
        if exported.retrieval is not None:
            parity["retrieval"] = exported.retrieval.to_dict()
        _finalize(engine, version, outcome, parity, final, exported.onnx_sha256)
    except BaseException as exc:
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)
        _mark_failed(engine, version, f"{type(exc).__name__}: {exc}")
        raise
    record = get_version(engine, version)
    if record.status != SERVABLE:
        logger.warning("v%d is not servable: %s", version, record.error)
    return record


def _reserve(engine: Engine, family: str, flow_run_id: str | None) -> int:
    with engine.begin() as conn:
        result = conn.execute(
            insert(model_versions_table).values(
                family=family,
                status="pending",
                created_at=now(),
                flow_run_id=flow_run_id,
                code_version=code_version(),
            )
        )
        key = result.inserted_primary_key
        assert key is not None
        return int(key[0])


def _finalize(
    engine: Engine,
    version: int,
    outcome: Outcome,
    parity: dict[str, Any],
    folder: Path,
    onnx_sha256: str,
) -> None:
    summary = outcome.to_dict()
    retrieval = parity.get("retrieval")
    error = None
    if not parity["passed"]:
        error = f"ONNX parity failed: {parity['reason']}"
    elif retrieval is not None and not retrieval["passed"]:
        error = f"item index check failed: {retrieval['reason']}"
    servable = error is None
    from recsys.export import OPSET

    with engine.begin() as conn:
        conn.execute(
            update(model_versions_table)
            .where(model_versions_table.c.version == version)
            .values(
                status=SERVABLE if servable else "unservable",
                registered_at=now(),
                params=summary["params"],
                train_config=summary["train_config"],
                training={
                    key: summary[key]
                    for key in (
                        "epochs",
                        "best_epoch",
                        "best_valid",
                        "stopped",
                        "chosen",
                        "seconds",
                        "train_seconds",
                        "seconds_to_best",
                        "device",
                        "precision",
                        "split",
                        "refit_of",
                    )
                },
                metrics=summary["metrics"],
                protocol=summary["protocol"],
                evaluated_users=summary["evaluated_users"],
                eval_digest=outcome.test.eval_digest,
                snapshot=summary["snapshot"],
                snapshot_digest=summary["snapshot"]["digest"],
                item_map_digest=outcome.snapshot.items.digest(),
                artifact_path=str(folder),
                onnx_sha256=onnx_sha256,
                opset=OPSET,
                parity=parity,
                error=error,
            )
        )


def _mark_failed(engine: Engine, version: int, error: str) -> None:
    try:
        with engine.begin() as conn:
            conn.execute(
                update(model_versions_table)
                .where(model_versions_table.c.version == version)
                .values(status="failed", error=error[:2000])
            )
    except Exception:  # the registration's own error is the one to report
        logger.exception("could not mark v%d as failed", version)
