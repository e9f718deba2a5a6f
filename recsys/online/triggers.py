"""The drift monitor's cool-down: at most one retrain it starts per cool-down, whoever asks.

The ``drift_triggers`` table is the memory: :func:`claim` looks for a trigger that is not
``failed`` within the cool-down and, if there is none, inserts one (``claimed``), both under
the named lock ``drift-trigger`` so two monitors deciding at once cannot both claim (the
second finds the lock held and claims nothing). The caller then starts the retrain and
records it (:func:`started`), or records why it could not (:func:`failed`, which gives the
cool-down back). A monitor that dies between the claim and the start leaves a ``claimed``
row that holds the cool-down: never more than one retrain, at the cost of perhaps none.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, insert, select, update

from recsys.db import locks
from recsys.db.schema import drift_triggers_table

LOCK_NAME = "drift-trigger"
LOCK_TTL = timedelta(minutes=5)
CLAIMED = "claimed"
STARTED = "started"
FAILED = "failed"


@dataclass(frozen=True)
class Claim:
    """The outcome of :func:`claim`: the new trigger's id, or None and why not."""

    trigger_id: int | None
    reason: str
    holding: dict[str, Any] | None = None  # the trigger that holds the cool-down

    @property
    def claimed(self) -> bool:
        return self.trigger_id is not None


def claim(
    engine: Engine,
    *,
    now_ms: int,
    cooldown_seconds: float,
    signals: list[dict[str, Any]],
    champion_version: int | None,
    deployment: str | None,
    monitor_run_id: str | None,
    holder: str,
) -> Claim:
    """Take the cool-down for a retrain at ``now_ms`` unless a trigger already holds it."""
    try:
        with locks.held(engine, LOCK_NAME, holder=holder, ttl=LOCK_TTL):
            holding = _holding(engine, now_ms - int(cooldown_seconds * 1000))
            if holding is not None:
                return Claim(None, f"in cool-down: trigger {holding['id']} holds it", holding)
            with engine.begin() as conn:
                trigger_id = conn.execute(
                    insert(drift_triggers_table)
                    .values(
                        triggered_at=now_ms,
                        champion_version=champion_version,
                        status=CLAIMED,
                        signals=signals,
                        deployment=deployment,
                        monitor_run_id=monitor_run_id,
                    )
                    .returning(drift_triggers_table.c.id)
                ).scalar_one()
            return Claim(int(trigger_id), "claimed")
    except locks.LockHeldError as exc:
        return Claim(None, f"another monitor is deciding: {exc}")


def started(engine: Engine, trigger_id: int, retrain_run_id: str) -> None:
    _set(engine, trigger_id, status=STARTED, retrain_run_id=retrain_run_id)


def failed(engine: Engine, trigger_id: int, error: str) -> None:
    """The retrain could not be started: the trigger no longer holds the cool-down."""
    _set(engine, trigger_id, status=FAILED, error=error[:2000])


def recent_triggers(engine: Engine, limit: int = 10) -> list[dict[str, Any]]:
    """The latest triggers, newest first."""
    t = drift_triggers_table
    with engine.connect() as conn:
        rows = conn.execute(select(t).order_by(t.c.triggered_at.desc(), t.c.id.desc()).limit(limit))
        return [dict(row._mapping) for row in rows]


def _holding(engine: Engine, after_ms: int) -> dict[str, Any] | None:
    t = drift_triggers_table
    with engine.connect() as conn:
        row = conn.execute(
            select(t)
            .where(t.c.triggered_at > after_ms)
            .where(t.c.status != FAILED)
            .order_by(t.c.triggered_at.desc(), t.c.id.desc())
            .limit(1)
        ).first()
    return None if row is None else dict(row._mapping)


def _set(engine: Engine, trigger_id: int, **values: Any) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(drift_triggers_table)
            .where(drift_triggers_table.c.id == trigger_id)
            .values(**values)
        )
