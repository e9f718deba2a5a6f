"""Registry storage: versions with their lineage, aliases with their history, artifacts.

What the prediction service needs and nothing heavier: reading versions and aliases, moving
an alias (by compare-and-swap, every move recorded so ``rollback`` can undo it) and loading a
version's verified artifact. Registering a version (:mod:`recsys.registry.registration`), the
promotion gate (:mod:`recsys.registry.promotion`) and clearing crashed registrations
(:mod:`recsys.registry.housekeeping`) are modules of their own.
"""

from __future__ import annotations

import functools
import getpass
import logging
import socket
import subprocess
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Row, insert, select, update
from sqlalchemy.exc import IntegrityError

from recsys import __version__
from recsys.artifacts import Artifact
from recsys.config import get_settings
from recsys.db.schema import alias_events_table, model_aliases_table, model_versions_table
from recsys.errors import RecsysError

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

    @property
    def refit_of(self) -> int | None:
        """The measured version this one repeats on every event, if it is a refit."""
        twin = (self.training or {}).get("refit_of")
        return None if twin is None else int(twin)

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
    root = Path(__file__).resolve().parents[2]
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
    """Who moved an alias: the mechanism and ``RECSYS_OPERATOR``, else the OS user on this host.

    In a container the OS user and host name say little (``root@<pod>``), so deployments name
    the operator instead.
    """
    operator = get_settings().operator
    if operator:
        return f"{via} ({operator})"
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{via} ({user}@{socket.gethostname()})"


def now() -> datetime:
    """The registry's clock (UTC)."""
    return datetime.now(UTC)


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


def servable_versions(engine: Engine) -> list[int]:
    """The numbers of the versions that may be served (promoted, tried), newest first; one
    indexed query, for choosers that need nothing else of them."""
    c = model_versions_table.c
    query = select(c.version).where(c.status == SERVABLE).order_by(c.version.desc())
    with engine.connect() as conn:
        return [int(v) for v in conn.execute(query).scalars()]


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
    moved_at = now()
    moved_by_other = RegistryError(
        f"{alias} moved while this request was being decided; look again and retry"
    )
    with engine.begin() as conn:
        if expected is None:
            try:
                with conn.begin_nested():
                    conn.execute(
                        insert(model_aliases_table).values(
                            alias=alias, version=version, updated_at=moved_at
                        )
                    )
            except IntegrityError:
                raise moved_by_other from None
        else:
            result = conn.execute(
                update(model_aliases_table)
                .where(model_aliases_table.c.alias == alias)
                .where(model_aliases_table.c.version == expected)
                .values(version=version, updated_at=moved_at)
            )
            if result.rowcount != 1:
                raise moved_by_other
        move = AliasMove(alias, action, expected, version, actor, reason, moved_at, details)
        conn.execute(
            insert(alias_events_table).values(
                alias=alias,
                action=action,
                from_version=expected,
                to_version=version,
                actor=actor,
                reason=reason,
                details=details,
                occurred_at=moved_at,
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
