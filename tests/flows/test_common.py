"""Freeing the database lock of a flow run that Prefect says has ended."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from prefect import flow, get_client
from prefect.states import Crashed, Running

from flows.common import free_lock_of_ended_run, run_holder
from recsys.db import locks
from recsys.db.engine import create_engine

TTL = timedelta(hours=12)


@flow(name="lock-holder")
def lock_holder() -> None:
    """Never run: its flow runs are created and moved by hand."""


def flow_run_in(state: Any) -> str:
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(lock_holder, state=Running())
        client.set_flow_run_state(run.id, state, force=True)
        return str(run.id)


@pytest.mark.slow
def test_a_lock_of_a_crashed_flow_run_is_freed_and_a_running_ones_kept(
    flow_home: dict[str, str],
) -> None:
    engine = create_engine(flow_home["RECSYS_DATABASE_URL"])
    running = flow_run_in(Running())
    locks.acquire(engine, "retrain", holder=run_holder(running), ttl=TTL)
    assert free_lock_of_ended_run(engine, "retrain") is None
    assert locks.holder(engine, "retrain") == f"flow run {running}"

    locks.release(engine, "retrain", holder=run_holder(running))
    crashed = flow_run_in(Crashed(message="no heartbeat"))
    locks.acquire(engine, "retrain", holder=run_holder(crashed), ttl=TTL)
    freed = free_lock_of_ended_run(engine, "retrain")
    assert freed == f"flow run {crashed}, which ended CRASHED"
    assert locks.holder(engine, "retrain") is None
    engine.dispose()


@pytest.mark.parametrize(
    "holder",
    [
        "retrain process 41 on host",  # not a flow run: its lock expires on its own
        "flow run 00000000-0000-4000-8000-000000000000",  # unknown to this Prefect server
    ],
)
def test_a_lock_not_held_by_a_known_flow_run_is_kept(
    flow_home: dict[str, str], holder: str
) -> None:
    engine = create_engine(flow_home["RECSYS_DATABASE_URL"])
    locks.acquire(engine, "retrain", holder=holder, ttl=TTL)
    assert free_lock_of_ended_run(engine, "retrain") is None
    assert locks.holder(engine, "retrain") == holder
    assert free_lock_of_ended_run(engine, "nothing held") is None
    engine.dispose()
