"""The model registry: versions with their lineage, aliases with their history, the promotion gate.

A version is reserved (``pending``, invisible), its artifact written into a ``.partial``
folder and renamed into place, and only then made visible in one transaction (``ready``, or
``unservable`` when the ONNX graph failed parity). A registration that raises marks its
row ``failed`` and removes its folder; one that dies leaves an invisible ``pending`` row and
a ``.partial`` folder that :func:`sweep` clears. Aliases move by compare-and-swap and every
move is recorded, so ``rollback`` can undo them.
"""

from __future__ import annotations

import functools
import getpass
import logging
import shutil
import socket
import subprocess
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine, Row, insert, select, update
from sqlalchemy.exc import IntegrityError

from recsys import __version__
from recsys.artifacts import Artifact
from recsys.db.schema import alias_events_table, model_aliases_table, model_versions_table
from recsys.errors import RecsysError
from recsys.evaluation import EvalResult, compare, evaluate

if TYPE_CHECKING:
    from recsys.data.extract import IdMap
    from recsys.data.splits import Split
    from recsys.experiment import Outcome

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
ALIASES = (CHAMPION, CHALLENGER)
SERVABLE = "ready"
VISIBLE_STATUSES = ("ready", "unservable")
DEFAULT_METRIC = "ndcg@10"
DEFAULT_MARGIN = 0.0
MODELS_FOLDER = "models"


class RegistryError(RecsysError):
    """A registry request that cannot be done (unknown version, nothing to roll back to, ...)."""


@dataclass(frozen=True)
class ModelRecord:
    """One row of ``model_versions`` plus the aliases pointing at it."""

    version: int
    family: str
    status: str
    created_at: datetime
    registered_at: datetime | None
    params: dict[str, Any] | None
    train_config: dict[str, Any] | None
    training: dict[str, Any] | None
    metrics: dict[str, Any] | None
    protocol: str | None
    evaluated_users: int | None
    eval_digest: str | None
    snapshot: dict[str, Any] | None
    snapshot_digest: str | None
    item_map_digest: str | None
    artifact_path: str | None
    onnx_sha256: str | None
    opset: int | None
    parity: dict[str, Any] | None
    gate: dict[str, Any] | None
    flow_run_id: str | None
    code_version: str | None
    error: str | None
    aliases: tuple[str, ...] = ()

    @classmethod
    def from_row(cls, row: Row[Any], aliases: tuple[str, ...] = ()) -> ModelRecord:
        values = dict(row._mapping)
        return cls(
            **{f.name: values[f.name] for f in fields(cls) if f.name != "aliases"}, aliases=aliases
        )

    def metric(self, name: str = DEFAULT_METRIC) -> float | None:
        if not self.metrics or name not in self.metrics:
            return None
        return float(self.metrics[name]["value"])

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["aliases"] = list(self.aliases)
        for key in ("created_at", "registered_at"):
            out[key] = out[key].isoformat(timespec="seconds") if out[key] else None
        return out


@dataclass(frozen=True)
class AliasMove:
    alias: str
    action: str
    from_version: int | None
    to_version: int
    actor: str
    reason: str
    occurred_at: datetime
    details: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["occurred_at"] = self.occurred_at.isoformat(timespec="seconds")
        return out


@functools.cache
def code_version() -> str:
    """The package version, plus the git commit (and ``.dirty``) when run from a checkout."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return __version__
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}{'.dirty' if dirty else ''}"


def actor(via: str) -> str:
    """Who moved an alias: the mechanism and the OS user on this host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{via} ({user}@{socket.gethostname()})"


def _now() -> datetime:
    return datetime.now(UTC)


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
) -> ModelRecord:
    """Export ``outcome`` to ONNX with parity, write its artifact and register the version.

    Atomic for readers: the version becomes visible only in the final transaction, after the
    artifact folder is complete and in place. Returns the record (``ready`` or
    ``unservable``); raises after marking the row ``failed`` if anything goes wrong.
    """
    from recsys.export import write_artifact

    version = _reserve(engine, outcome.name, flow_run_id)
    partial = partial_folder(artifacts_dir, version, outcome.name)
    final = artifact_folder(artifacts_dir, version, outcome.name)
    try:
        exported = write_artifact(outcome, partial, version=version, code_version=code_version())
        partial.rename(final)
        _finalize(engine, version, outcome, exported.parity.to_dict(), final, exported.onnx_sha256)
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
                created_at=_now(),
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
    servable = bool(parity["passed"])
    from recsys.export import OPSET

    with engine.begin() as conn:
        conn.execute(
            update(model_versions_table)
            .where(model_versions_table.c.version == version)
            .values(
                status=SERVABLE if servable else "unservable",
                registered_at=_now(),
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
                        "split",
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
                error=None if servable else f"ONNX parity failed: {parity['reason']}",
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


def get_version(engine: Engine, version: int, *, include_hidden: bool = False) -> ModelRecord:
    with engine.connect() as conn:
        row = conn.execute(
            select(model_versions_table).where(model_versions_table.c.version == version)
        ).first()
        pointing = conn.execute(
            select(model_aliases_table.c.alias).where(model_aliases_table.c.version == version)
        ).scalars()
        names = tuple(sorted(pointing))
    if row is None or (not include_hidden and row.status not in VISIBLE_STATUSES):
        raise RegistryError(f"no registered model version {version}")
    return ModelRecord.from_row(row, names)


def list_versions(engine: Engine, *, include_hidden: bool = False) -> list[ModelRecord]:
    """Versions, newest first; pending, failed and abandoned ones only with ``include_hidden``."""
    query = select(model_versions_table).order_by(model_versions_table.c.version.desc())
    if not include_hidden:
        query = query.where(model_versions_table.c.status.in_(VISIBLE_STATUSES))
    by_version: dict[int, list[str]] = {}
    with engine.connect() as conn:
        rows = conn.execute(query).all()
        for alias, version in conn.execute(
            select(model_aliases_table.c.alias, model_aliases_table.c.version)
        ).all():
            by_version.setdefault(version, []).append(alias)
    return [ModelRecord.from_row(r, tuple(sorted(by_version.get(r.version, [])))) for r in rows]


def aliases(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(select(model_aliases_table.c.alias, model_aliases_table.c.version))
        return {alias: int(version) for alias, version in rows}


def alias_version(engine: Engine, alias: str = CHAMPION) -> int | None:
    return aliases(engine).get(alias)


def alias_history(engine: Engine, alias: str | None = None) -> list[AliasMove]:
    """Every recorded move, oldest first (of one alias, or all)."""
    query = select(alias_events_table).order_by(alias_events_table.c.id)
    if alias is not None:
        query = query.where(alias_events_table.c.alias == alias)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        AliasMove(
            alias=r.alias,
            action=r.action,
            from_version=r.from_version,
            to_version=r.to_version,
            actor=r.actor,
            reason=r.reason,
            occurred_at=r.occurred_at,
            details=r.details,
        )
        for r in rows
    ]


def move_alias(
    engine: Engine,
    alias: str,
    version: int,
    *,
    expected: int | None,
    action: str,
    actor: str,
    reason: str,
    details: dict[str, Any] | None = None,
) -> AliasMove:
    """Point ``alias`` at ``version`` if it still points at ``expected`` (None: unset).

    The check and the move are one statement in one transaction with the recorded event, so
    two processes promoting at once cannot both win; the loser gets a RegistryError.
    """
    if alias not in ALIASES:
        raise RegistryError(f"unknown alias {alias!r}; aliases are {', '.join(ALIASES)}")
    record = get_version(engine, version)
    if record.status != SERVABLE:
        raise RegistryError(
            f"v{version} is {record.status} and cannot be {alias}: {record.error or ''}".rstrip(
                ": "
            )
        )
    now = _now()
    moved_by_other = RegistryError(
        f"{alias} moved while this request was being decided; look again and retry"
    )
    with engine.begin() as conn:
        if expected is None:
            try:
                with conn.begin_nested():
                    conn.execute(
                        insert(model_aliases_table).values(
                            alias=alias, version=version, updated_at=now
                        )
                    )
            except IntegrityError:
                raise moved_by_other from None
        else:
            result = conn.execute(
                update(model_aliases_table)
                .where(model_aliases_table.c.alias == alias)
                .where(model_aliases_table.c.version == expected)
                .values(version=version, updated_at=now)
            )
            if result.rowcount != 1:
                raise moved_by_other
        move = AliasMove(alias, action, expected, version, actor, reason, now, details)
        conn.execute(
            insert(alias_events_table).values(
                alias=alias,
                action=action,
                from_version=expected,
                to_version=version,
                actor=actor,
                reason=reason,
                details=details,
                occurred_at=now,
            )
        )
    logger.info("%s: v%s -> v%d (%s)", alias, expected, version, reason)
    return move


def promote(
    engine: Engine, version: int, *, actor: str, reason: str, alias: str = CHAMPION
) -> AliasMove:
    """Point ``alias`` at a servable version by hand (recorded like every move)."""
    current = alias_version(engine, alias)
    if current == version:
        raise RegistryError(f"v{version} is already {alias}")
    return move_alias(
        engine, alias, version, expected=current, action="promote", actor=actor, reason=reason
    )


def champion_stack(engine: Engine, alias: str = CHAMPION) -> list[int]:
    """The alias's versions as a stack: a promotion pushes, a rollback pops."""
    stack: list[int] = []
    for move in alias_history(engine, alias):
        if move.action == "rollback":
            if stack:
                stack.pop()
        else:
            stack.append(move.to_version)
    return stack


def rollback(engine: Engine, *, actor: str, reason: str, alias: str = CHAMPION) -> AliasMove:
    """Move ``alias`` back to the version it pointed at before the current one."""
    stack = champion_stack(engine, alias)
    current = alias_version(engine, alias)
    if current is None:
        raise RegistryError(f"there is no {alias} to roll back")
    if len(stack) < 2 or stack[-1] != current:
        raise RegistryError(f"{alias} v{current} has no earlier version to roll back to")
    return move_alias(
        engine, alias, stack[-2], expected=current, action="rollback", actor=actor, reason=reason
    )


def load_artifact(
    engine: Engine, ref: int | str = CHAMPION, *, threads: int | None = None
) -> Artifact:
    """The verified artifact of a version number or an alias; refuses unservable versions."""
    if isinstance(ref, str):
        version = alias_version(engine, ref)
        if version is None:
            raise RegistryError(
                f"there is no {ref} model yet: train one (`recsys train --model sasrec`) "
                "or promote a version"
            )
    else:
        version = ref
    record = get_version(engine, version)
    if record.status != SERVABLE or record.artifact_path is None:
        raise RegistryError(f"v{version} is {record.status}: {record.error or 'not servable'}")
    artifact = Artifact.load(
        Path(record.artifact_path), onnx_sha256=record.onnx_sha256, threads=threads
    )
    if artifact.version != version:
        raise RegistryError(f"{record.artifact_path} holds v{artifact.version}, not v{version}")
    return artifact


def sweep(engine: Engine, artifacts_dir: Path, *, older_than: timedelta) -> dict[str, Any]:
    """Clear what crashed registrations left: pending rows -> abandoned, folders removed.

    Only rows and ``.partial`` folders older than ``older_than`` are touched, so a
    registration still running in another process is left alone; the result says what was
    left (``left_pending_versions``, ``left_partial_folders``) besides what was cleared.
    """
    cutoff = _now() - older_than
    models = artifacts_dir / MODELS_FOLDER
    abandoned = 0
    pending = model_versions_table.c.status == "pending"
    with engine.begin() as conn:
        rows = conn.execute(
            select(model_versions_table.c.version, model_versions_table.c.family)
            .where(pending)
            .where(model_versions_table.c.created_at < cutoff)
        ).all()
        left = list(
            conn.execute(
                select(model_versions_table.c.version)
                .where(pending)
                .where(model_versions_table.c.created_at >= cutoff)
                .order_by(model_versions_table.c.version)
            ).scalars()
        )
        for version, family in rows:
            shutil.rmtree(artifact_folder(artifacts_dir, version, family), ignore_errors=True)
            conn.execute(
                update(model_versions_table)
                .where(model_versions_table.c.version == version)
                .where(pending)
                .values(status="abandoned", error="registration did not finish (process ended)")
            )
            abandoned += 1
    removed = left_folders = 0
    if models.is_dir():
        for folder in models.glob(".v*.partial"):
            modified = datetime.fromtimestamp(folder.stat().st_mtime, tz=UTC)
            if modified < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
            else:
                left_folders += 1
    return {
        "abandoned_versions": abandoned,
        "removed_partial_folders": removed,
        "left_pending_versions": left,
        "left_partial_folders": left_folders,
    }


# The promotion gate ---------------------------------------------------------------------


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
            decided_at=_now().isoformat(timespec="seconds"),
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
            baseline_name = f"champion v{champion}"
            baseline = evaluate_artifact(load_artifact(engine, champion), data, users, items)
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
