"""What an experiment found and how it ends: each arm's online metrics since the start, the
challenger's difference from the champion (95% interval, p-value), and the recorded decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from sqlalchemy import Engine, update

from recsys import registry
from recsys.db.schema import experiments_table as table
from recsys.online.attribution import attribute
from recsys.online.experiments import (
    CHALLENGER_ARM,
    CHAMPION_ARM,
    DECISIONS,
    RUNNING,
    STOPPED,
    Experiment,
    ExperimentError,
    get_experiment,
)
from recsys.online.metrics import ArmMetrics, Difference, Estimate, compare, online_metrics


@dataclass(frozen=True)
class ExperimentStatus:
    experiment: Experiment
    arms: dict[str, ArmMetrics]
    differences: list[Difference]

    def report(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment.report(),
            "arms": {arm: m.report() for arm, m in self.arms.items()},
            "differences": [d.report() for d in self.differences],
        }


def experiment_status(
    engine: Engine,
    experiment: Experiment,
    *,
    click_events: list[str],
    conversion_events: list[str],
    window_seconds: float,
    k: int = 10,
    until_ms: int | None = None,
    attributed: pd.DataFrame | None = None,
) -> ExperimentStatus:
    """Each arm's online metrics since the start, and challenger minus champion on the
    click-through and conversion rates (interval and p-value).

    Rebuilds the attributions since the start first, unless ``attributed`` brings them
    (:func:`recsys.online.attribution.attributions` from the start: nothing is written).
    """
    if attributed is None:
        attribute(engine, window_seconds=window_seconds, since_ms=experiment.started_ms)
    groups = online_metrics(
        engine,
        click_events=click_events,
        conversion_events=conversion_events,
        since_ms=experiment.started_ms,
        until_ms=until_ms,
        k=k,
        experiment_id=experiment.id,
        attributed=attributed,
    )
    arms: dict[str, ArmMetrics] = {}
    for group in groups:
        if group.arm is None:
            continue
        if group.arm in arms:  # the champion moved during the experiment: the latest counts
            continue
        arms[group.arm] = group
    differences = []
    a, b = arms.get(CHAMPION_ARM), arms.get(CHALLENGER_ARM)
    for name in ("ctr", "conversion"):
        ea = getattr(a, name) if a else None
        eb = getattr(b, name) if b else None
        differences.append(
            compare(
                f"{name}@{k}",
                _successes(ea),
                ea.n if ea else 0,
                _successes(eb),
                eb.n if eb else 0,
            )
        )
    return ExperimentStatus(experiment, arms, differences)


def _successes(estimate: Estimate | None) -> int:
    if estimate is None or estimate.value is None:
        return 0
    return round(estimate.value * estimate.n)


def stop_experiment(
    engine: Engine,
    decision: str,
    *,
    actor: str,
    reason: str,
    status: ExperimentStatus,
) -> Experiment:
    """End the running experiment with ``decision`` and the numbers of ``status``;
    ``promote`` moves the champion alias to the challenger (recorded like any move)."""
    if decision not in DECISIONS:
        raise ExperimentError(f"decision must be one of {', '.join(DECISIONS)}")
    experiment = status.experiment
    if experiment.status != RUNNING:
        raise ExperimentError(f"experiment #{experiment.id} is not running")
    results = status.report()
    results.pop("experiment")
    if decision == "promote":
        ctr = status.differences[0]
        registry.promote(
            engine,
            experiment.challenger_version,
            actor=actor,
            reason=f"experiment #{experiment.id}: {reason} (ctr diff {ctr.diff}, p {ctr.p_value})",
        )
    with engine.begin() as conn:
        moved = conn.execute(
            update(table)
            .where(table.c.id == experiment.id, table.c.status == RUNNING)
            .values(
                status=STOPPED,
                stopped_at=datetime.now(UTC),
                decision=decision,
                decided_by=actor,
                decision_reason=reason,
                results=results,
            )
        )
        if moved.rowcount != 1:
            raise ExperimentError(f"experiment #{experiment.id} was stopped meanwhile")
    return get_experiment(engine, experiment.id)
