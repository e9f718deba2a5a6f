"""The promotion gate: whether a registered version replaces the champion, and why.

The candidate is compared with the champion (re-scored through its ONNX artifact on the
candidate's test users) or, in an empty registry, with popularity; the decision is stored on
the version. This module evaluates (numpy, and pandas through the splits): the prediction
service never imports it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine, update

from recsys.artifacts import Artifact
from recsys.db.schema import model_versions_table
from recsys.errors import RecsysError
from recsys.evaluation import EvalResult, compare, evaluate
from recsys.registry.store import (
    CHAMPION,
    DEFAULT_MARGIN,
    DEFAULT_METRIC,
    SERVABLE,
    RegistryError,
    alias_version,
    get_version,
    load_artifact,
    move_alias,
    now,
)

if TYPE_CHECKING:
    from recsys.data.extract import IdMap
    from recsys.data.splits import Split


@dataclass(frozen=True)
class GateDecision:
    """Whether a candidate became champion, and the paired-bootstrap numbers behind it.

    Rule: promote when the lower end of the 95% interval of ``candidate - baseline`` on
    ``metric`` (same users, paired bootstrap) is above ``margin``. The baseline is the
    current champion re-scored through its ONNX artifact on the candidate's test users, or
    popularity when the registry has no champion.
    """

    promoted: bool
    reason: str
    metric: str
    margin: float
    baseline: str
    baseline_version: int | None
    candidate_value: float | None
    baseline_value: float | None
    diff: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    num_users: int | None
    wins: int | None
    losses: int | None
    decided_at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def popularity_baseline(data: Split) -> EvalResult:
    """Popularity (training events per item) scored on the test users of ``data``."""
    counts = np.bincount(data.train.item_idx, minlength=data.num_items + 1)[1:]
    row = counts.astype(np.float32)

    def score(history: npt.NDArray[np.int64], users: npt.NDArray[np.int64]) -> Any:
        return np.broadcast_to(row, (len(users), data.num_items))

    return evaluate(score, data.test, num_items=data.num_items, protocol=data.protocol)


def evaluate_artifact(artifact: Artifact, data: Split, users: IdMap, items: IdMap) -> EvalResult:
    """Score ``data.test`` with an artifact trained on other id maps, through onnxruntime.

    Histories and users are translated into the artifact's indices (items it does not know
    are dropped from the input); items it does not know get -inf and so can never be hit.
    """
    to_art_item = _translation(items.to_list(), artifact.item_index)  # (Nc + 1,)
    to_art_user = _translation(users.to_list(), artifact.user_index)  # (Uc + 1,)
    known = to_art_item[1:] > 0
    columns = to_art_item[1:][known] - 1  # artifact columns of the candidate's known items

    def score(history: npt.NDArray[np.int64], user: npt.NDArray[np.int64]) -> Any:
        mapped = _compact_left(to_art_item[history])
        raw = artifact.score(mapped, to_art_user[user])  # (B, I_artifact)
        out = np.full((len(user), data.num_items), -np.inf, dtype=np.float32)
        out[:, known] = raw[:, columns]
        return out

    return evaluate(
        score,
        data.test,
        num_items=data.num_items,
        protocol=data.protocol,
        max_len=artifact.max_len,
        batch_size=256,
    )


def measured_as(engine: Engine, version: int) -> int:
    """The version whose artifact stands for ``version`` in the gate.

    A refit (``training.refit_of``) has trained on the events held out for testing, and a
    new snapshot's test targets include many of them (every user with no newer event): scored
    itself it would look better than it is. Its measured run stands for it while that run's
    artifact is servable; otherwise the refit itself does, and the comparison favours it.
    """
    record = get_version(engine, version)
    twin = record.refit_of
    if twin is None:
        return version
    try:
        measured = get_version(engine, twin)
    except RegistryError:
        return version
    if measured.status != SERVABLE or measured.artifact_path is None:
        return version
    return measured.version


def _is_popularity_baseline(family: str) -> bool:
    """Whether ``family``'s model class is the popularity baseline (its class flag)."""
    from recsys.models import spec  # torch: the gate needs it, evaluating an artifact does not

    try:
        return spec(family).model.is_popularity_baseline
    except RecsysError:  # a family this code no longer has
        return False


def _translation(ids: list[str], index: dict[str, int]) -> npt.NDArray[np.int64]:
    return np.asarray([0, *(index.get(i, 0) for i in ids)], dtype=np.int64)


def _compact_left(history: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Re-left-pad rows after some items became 0 (unknown), keeping the others' order."""
    order = np.argsort(history > 0, axis=1, kind="stable")  # zeros first, order kept
    return np.take_along_axis(history, order, axis=1)


def gate(
    engine: Engine,
    version: int,
    candidate: EvalResult,
    data: Split,
    users: IdMap,
    items: IdMap,
    *,
    metric: str = DEFAULT_METRIC,
    margin: float = DEFAULT_MARGIN,
    actor: str,
    promote_on_success: bool = True,
) -> GateDecision:
    """Decide whether registered ``version`` replaces the champion; record it; move the alias.

    ``candidate`` is the version's evaluation on ``data.test``; ``users``/``items`` are the
    id maps of the snapshot ``data`` was split from. The decision is stored on the version.
    """
    record = get_version(engine, version)
    champion = alias_version(engine, CHAMPION)

    def decide(promoted: bool, reason: str, baseline: str, comparison: Any = None) -> GateDecision:
        numbers = {
            "candidate_value": None if comparison is None else comparison["mean_b"],
            "baseline_value": None if comparison is None else comparison["mean_a"],
            "diff": None if comparison is None else comparison["diff"],
            "ci_low": None if comparison is None else comparison["ci_low"],
            "ci_high": None if comparison is None else comparison["ci_high"],
            "p_value": None if comparison is None else comparison["p_value"],
            "num_users": None if comparison is None else comparison["num_users"],
            "wins": None if comparison is None else comparison["wins"],
            "losses": None if comparison is None else comparison["losses"],
        }
        return GateDecision(
            promoted=promoted,
            reason=reason,
            metric=metric,
            margin=margin,
            baseline=baseline,
            baseline_version=champion,
            decided_at=now().isoformat(timespec="seconds"),
            **numbers,
        )

    if record.status != SERVABLE:
        decision = decide(False, f"not servable: {record.error}", "none")
    elif champion is None and _is_popularity_baseline(record.family):
        decision = decide(
            False,
            "an empty registry's first champion must beat popularity; "
            f"{record.family} cannot beat itself "
            "(promote it by hand with `recsys models promote` if that is what you want)",
            "popularity",
        )
    else:
        if champion is None:
            baseline_name, baseline = "popularity", popularity_baseline(data)
        else:
            measured = measured_as(engine, champion)
            baseline_name = f"champion v{champion}"
            if measured != champion:
                baseline_name += f" (as measured: v{measured}, of which it is a refit)"
            baseline = evaluate_artifact(load_artifact(engine, measured), data, users, items)
        comparison = compare(baseline, candidate, metric)
        wins = comparison["ci_low"] > margin
        verdict = "beats" if wins else "does not beat"
        reason = (
            f"{metric} {comparison['mean_b']:.4f} vs {comparison['mean_a']:.4f} ({baseline_name}): "
            f"diff {comparison['diff']:+.4f}, 95% CI [{comparison['ci_low']:+.4f}, "
            f"{comparison['ci_high']:+.4f}], p={comparison['p_value']:.3f}, on "
            f"{comparison['num_users']:,} users; {verdict} the margin {margin:g}"
        )
        decision = decide(wins, reason, baseline_name, comparison)
    if decision.promoted and promote_on_success:
        try:
            move_alias(
                engine,
                CHAMPION,
                version,
                expected=champion,
                action="promote",
                actor=actor,
                reason=f"promotion gate: {decision.reason}",
                details=decision.to_dict(),
            )
        except RegistryError as exc:
            decision = replace(decision, promoted=False, reason=f"{exc} ({decision.reason})")
    with engine.begin() as conn:
        conn.execute(
            update(model_versions_table)
            .where(model_versions_table.c.version == version)
            .values(gate=decision.to_dict())
        )
    return decision
