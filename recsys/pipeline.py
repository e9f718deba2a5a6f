"""Train -> register -> gate: what becomes of one trained model, for the CLI and the flows.

``recsys train`` and the retrain flow both go through here: :func:`register_and_gate`
registers an :class:`~recsys.experiment.Outcome` (ONNX export with parity) and, when asked,
runs the promotion gate on it; :func:`gate_candidate` is its gate step alone, for a version
registered earlier (the retrain registers every candidate, then gates the best one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from recsys.errors import RecsysError
from recsys.experiment import Outcome
from recsys.registry import promotion, store
from recsys.registry.promotion import GateDecision
from recsys.registry.registration import register
from recsys.registry.store import DEFAULT_MARGIN, DEFAULT_METRIC, ModelRecord


@dataclass(frozen=True)
class Registered:
    """A registered version, its gate decision (None when not gated) and the champion after."""

    record: ModelRecord
    decision: GateDecision | None
    champion: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.record.version,
            "status": self.record.status,
            "artifact": self.record.artifact_path,
            "onnx_sha256": self.record.onnx_sha256,
            "parity": self.record.parity,
            "gate": None if self.decision is None else self.decision.to_dict(),
            "champion": self.champion,
        }


def check_gate_metric(outcome: Outcome, metric: str) -> None:
    """Refuse a gate metric the outcome's protocol has no per-user values of."""
    if metric not in outcome.test.per_user:
        raise RecsysError(
            f"{metric!r} is not a per-user metric of the {outcome.split.protocol} protocol: "
            f"use one of {', '.join(outcome.test.per_user)}"
        )


def gate_candidate(
    engine: Engine,
    version: int,
    outcome: Outcome,
    *,
    metric: str = DEFAULT_METRIC,
    margin: float = DEFAULT_MARGIN,
    actor: str,
) -> GateDecision:
    """The promotion gate on registered ``version``, trained and evaluated as ``outcome``."""
    return promotion.gate(
        engine,
        version,
        outcome.test,
        outcome.split,
        outcome.snapshot.users,
        outcome.snapshot.items,
        metric=metric,
        margin=margin,
        actor=actor,
    )


def register_and_gate(
    engine: Engine,
    outcome: Outcome,
    *,
    artifacts_dir: Path,
    actor: str,
    metric: str = DEFAULT_METRIC,
    margin: float = DEFAULT_MARGIN,
    flow_run_id: str | None = None,
    gate: bool = True,
) -> Registered:
    """Register ``outcome`` as a new version and, with ``gate``, decide whether it is champion.

    With ``gate`` the metric is checked before anything is registered. ``actor`` is who moves
    the champion alias if the gate promotes (see :func:`recsys.registry.actor`). Raises what
    registration raises (the version is then marked failed, see
    :func:`recsys.registry.registration.register`).
    """
    if gate:
        check_gate_metric(outcome, metric)
    record = register(engine, outcome, artifacts_dir=artifacts_dir, flow_run_id=flow_run_id)
    decision = None
    if gate:
        decision = gate_candidate(
            engine, record.version, outcome, metric=metric, margin=margin, actor=actor
        )
    return Registered(record, decision, store.alias_version(engine, store.CHAMPION))
