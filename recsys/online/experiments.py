"""Champion-versus-challenger experiments: who sees which model, and which one users prefer.

An experiment sends ``share`` of the users to the challenger version. The arm is a stable
hash of the salted user id (or session id): the same person is in the same arm on every
request and after every restart, and no state is kept per user. A request with neither id
is answered by the champion outside the experiment. ``status`` compares the arms' online
metrics (difference, 95% interval, p-value); ``stop`` records the decision with those
numbers, and ``promote`` also moves the champion alias to the challenger
(:mod:`recsys.online.outcomes`). This module needs SQLAlchemy only: the prediction service
routes requests with it.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError

from recsys import registry
from recsys.db.schema import experiments_table as table
from recsys.errors import RecsysError

CHAMPION_ARM = "champion"
CHALLENGER_ARM = "challenger"
RUNNING = "running"
STOPPED = "stopped"
DECISIONS = ("promote", "keep")


class ExperimentError(RecsysError):
    """An experiment cannot start or stop as asked (one is running, none is, a bad share)."""


@dataclass(frozen=True)
class Experiment:
    id: int
    status: str
    champion_version: int
    challenger_version: int
    share: float
    salt: str
    started_at: datetime
    started_by: str
    reason: str
    stopped_at: datetime | None = None
    decision: str | None = None
    decided_by: str | None = None
    decision_reason: str | None = None
    results: dict[str, Any] | None = None

    @property
    def started_ms(self) -> int:
        moment = self.started_at
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return int(moment.timestamp() * 1000)

    def arm(self, who: str | None) -> str | None:
        """The arm of a user or session id; None (the champion, outside) without one."""
        if who is None:
            return None
        return CHALLENGER_ARM if bucket(self.salt, who) < self.share else CHAMPION_ARM

    def report(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "salt"}
        for key in ("started_at", "stopped_at"):
            out[key] = None if out[key] is None else out[key].isoformat()
        return out


def bucket(salt: str, who: str) -> float:
    """A uniform number in [0, 1) fixed by ``salt`` and ``who`` (64 bits of BLAKE2b)."""
    digest = hashlib.blake2b(f"{salt}:{who}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def running_experiment(engine: Engine) -> Experiment | None:
    with engine.connect() as conn:
        row = conn.execute(select(table).where(table.c.status == RUNNING)).first()
    return None if row is None else Experiment(**row._asdict())


def get_experiment(engine: Engine, experiment_id: int | None = None) -> Experiment:
    """The experiment ``experiment_id``, or the running one, else the latest."""
    stmt = select(table)
    if experiment_id is not None:
        stmt = stmt.where(table.c.id == experiment_id)
    else:
        stmt = stmt.order_by((table.c.status == RUNNING).desc(), table.c.id.desc()).limit(1)
    with engine.connect() as conn:
        row = conn.execute(stmt).first()
    if row is None:
        what = f"experiment #{experiment_id}" if experiment_id is not None else "experiment"
        raise ExperimentError(f"no {what} yet: start one with `recsys experiments start`")
    return Experiment(**row._asdict())


def list_experiments(engine: Engine, limit: int = 20) -> list[Experiment]:
    """The latest experiments, newest first."""
    with engine.connect() as conn:
        rows = conn.execute(select(table).order_by(table.c.id.desc()).limit(limit)).all()
    return [Experiment(**row._asdict()) for row in rows]


def start_experiment(
    engine: Engine, challenger: int, share: float, *, actor: str, reason: str
) -> Experiment:
    """Start sending ``share`` of the users to version ``challenger``; one at a time."""
    if not 0 < share < 1:
        raise ExperimentError(f"--share must be between 0 and 1 (exclusive), got {share}")
    champion = registry.alias_version(engine, registry.CHAMPION)
    if champion is None:
        raise ExperimentError("there is no champion to compare the challenger with")
    record = registry.get_version(engine, challenger)
    if record.status != registry.SERVABLE:
        raise ExperimentError(f"v{challenger} is {record.status}, not servable")
    if challenger == champion:
        raise ExperimentError(f"v{challenger} is the champion: name another version")
    running = running_experiment(engine)
    if running is not None:
        raise ExperimentError(_running_message(running))
    values = {
        "status": RUNNING,
        "champion_version": champion,
        "challenger_version": challenger,
        "share": float(share),
        "salt": uuid.uuid4().hex,
        "started_at": datetime.now(UTC),
        "started_by": actor,
        "reason": reason,
    }
    try:
        with engine.begin() as conn:
            new_id = conn.execute(insert(table).values(**values).returning(table.c.id)).scalar_one()
    except IntegrityError:  # another start won the race
        found = running_experiment(engine)
        raise ExperimentError(
            _running_message(found) if found else "another experiment started meanwhile"
        ) from None
    return get_experiment(engine, new_id)


def _running_message(running: Experiment) -> str:
    return (
        f"experiment #{running.id} (v{running.challenger_version} on "
        f"{running.share:.0%}) is running: stop it first"
    )
