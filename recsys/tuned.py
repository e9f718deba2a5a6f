"""Tuned settings: the best trial of each tuning study, recorded per model family, data
snapshot and split in ``tuned_settings``, and read back by the retrain.

``recsys.tuning`` runs the studies (Optuna); this module is only the table and what a row
means for a training run, so the retrain reads it without loading Optuna. ``params`` are
flat, as a trial suggested them: each name is a field of the family's config dataclass or
of ``TrainConfig`` (:func:`split_params` sorts them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, insert, select

from recsys.db.schema import tuned_settings_table as table


@dataclass(frozen=True)
class TunedSettings:
    """One row of ``tuned_settings``: what a study found for ``family`` and on what data."""

    family: str
    protocol: str
    snapshot_digest: str
    study_name: str
    params: dict[str, Any]
    metric: str
    best_valid: float  # the best trial's validation score: the only number tuning selects on
    best_trial: int
    trials: int  # finished trials of the study (complete and pruned), all runs together
    pruned: int
    seconds: float  # of the run that recorded this row
    created_at: datetime | None = None
    id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.created_at is not None:
            data["created_at"] = self.created_at.isoformat(timespec="seconds")
        return data

    def describe(self) -> str:
        """One line for reports: which study, on which data, how good on validation."""
        when = self.created_at.strftime("%Y-%m-%d %H:%M") if self.created_at else "-"
        return (
            f"tuned {when} UTC by study `{self.study_name}` (snapshot "
            f"`{self.snapshot_digest[:12]}`, {self.protocol} split, {self.trials} trials, "
            f"{self.pruned} pruned): valid {self.metric} {self.best_valid:.4f} at trial "
            f"#{self.best_trial}"
        )


def record(engine: Engine, settings: TunedSettings) -> TunedSettings:
    """Insert ``settings`` (now as its time); returns it with its id and time."""
    now = datetime.now(UTC)
    values = settings.to_dict() | {"created_at": now}
    values.pop("id")
    with engine.begin() as connection:
        key = connection.execute(insert(table).values(**values)).inserted_primary_key
    assert key is not None
    return dataclasses.replace(settings, created_at=now, id=int(key[0]))


def latest(engine: Engine, family: str) -> TunedSettings | None:
    """The most recent tuned settings of ``family`` (whatever snapshot they were tuned on:
    the data moves on between re-tunes), or None when it was never tuned."""
    query = select(table).where(table.c.family == family).order_by(table.c.id.desc()).limit(1)
    with engine.connect() as connection:
        row = connection.execute(query).mappings().first()
    if row is None:
        return None
    values = dict(row)
    created = values["created_at"]
    if created is not None and created.tzinfo is None:  # SQLite keeps no time zone
        values["created_at"] = created.replace(tzinfo=UTC)
    return TunedSettings(**values)


def split_params(family: str, params: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """``params`` as the family's config (defaults for the rest) and ``TrainConfig``
    overrides. A name that is neither (a space changed since) is an error, not ignored."""
    from recsys.errors import RecsysError
    from recsys.models import spec
    from recsys.training import TrainConfig

    model_spec = spec(family)
    model_fields = {f.name for f in dataclasses.fields(model_spec.config)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(params) - model_fields - train_fields)
    if unknown:
        raise RecsysError(f"tuned settings of {family} name unknown fields: {', '.join(unknown)}")
    config = model_spec.config(**{k: v for k, v in params.items() if k in model_fields})
    train = {k: v for k, v in params.items() if k in train_fields and k not in model_fields}
    return config, train
