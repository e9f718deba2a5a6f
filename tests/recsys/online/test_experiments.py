"""Experiments without a model: the stable split, and one running experiment at a time
(enforced by the database on SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from recsys.db.schema import experiments_table
from recsys.online.experiments import (
    CHALLENGER_ARM,
    CHAMPION_ARM,
    Experiment,
    ExperimentError,
    bucket,
    get_experiment,
    running_experiment,
)


def _experiment(share: float, salt: str = "salt") -> Experiment:
    return Experiment(1, "running", 1, 2, share, salt, datetime.now(UTC), "tests", "why")


def test_the_split_is_stable_and_close_to_the_share() -> None:
    ten = _experiment(0.1)
    users = [f"user-{n}" for n in range(20_000)]
    arms = [ten.arm(u) for u in users]
    assert arms == [_experiment(0.1).arm(u) for u in users]  # a restart: the same arms
    share = arms.count(CHALLENGER_ARM) / len(users)
    assert 0.09 < share < 0.11
    assert set(arms) == {CHAMPION_ARM, CHALLENGER_ARM} and ten.arm(None) is None
    # A larger share only adds users to the challenger: nobody moves back.
    half = _experiment(0.5)
    moved = [half.arm(u) for u, a in zip(users, arms, strict=True) if a == CHALLENGER_ARM]
    assert set(moved) == {CHALLENGER_ARM}
    # Another experiment (another salt) draws another split.
    other = [_experiment(0.1, "pepper").arm(u) for u in users]
    assert other != arms
    assert 0 <= bucket("s", "u") < 1


def test_one_running_experiment_at_a_time_is_a_database_rule(engine: sa.Engine) -> None:
    assert running_experiment(engine) is None
    with pytest.raises(ExperimentError, match="no experiment yet"):
        get_experiment(engine)
    row = {
        "status": "running",
        "champion_version": 1,
        "challenger_version": 2,
        "share": 0.1,
        "salt": "s",
        "started_at": datetime.now(UTC),
        "started_by": "tests",
        "reason": "why",
    }
    with engine.begin() as conn:
        conn.execute(sa.insert(experiments_table).values(**row))
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.insert(experiments_table).values(**row))
    with engine.begin() as conn:  # stopped ones may be many
        conn.execute(sa.insert(experiments_table).values(**(row | {"status": "stopped"})))
        conn.execute(sa.insert(experiments_table).values(**(row | {"status": "stopped"})))
    found = running_experiment(engine)
    assert found is not None and found.challenger_version == 2
    assert get_experiment(engine).id == found.id  # the running one before later stopped ones
    assert "salt" not in found.report()
    from recsys.online.experiments import list_experiments

    listed = list_experiments(engine)
    assert [e.status for e in listed] == ["stopped", "stopped", "running"]
    assert [e.id for e in list_experiments(engine, limit=1)] == [listed[0].id]
