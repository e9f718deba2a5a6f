"""The sync flow over the shop's sources: task per source, report artifact, retries, skips."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import sqlalchemy as sa
from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.settings import PREFECT_API_URL
from prefect.states import State
from sqlalchemy.exc import OperationalError

import flows.sync as sync_module
from flows.sync import sync_flow, sync_report, transient_sync_error
from recsys.db import locks
from recsys.db.engine import create_engine
from recsys.db.migrate import upgrade
from recsys.sources.config import SourceError

from ..recsys.sources.conftest import PURCHASES_STORED, fill, write_sources

SOURCES = ["purchases", "views", "products", "customers"]


@pytest.fixture(params=["sqlite", "postgresql"])
def shop_home(
    request: pytest.FixtureRequest,
    flow_home: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[sa.Engine]:
    """The shop as the sources file's database, and the store; on PostgreSQL both live in one
    fresh database (their tables do not meet). Yields the store's engine."""
    if request.param == "sqlite":
        shop_url, store_url = f"sqlite:///{tmp_path / 'shop.db'}", flow_home["RECSYS_DATABASE_URL"]
    else:
        shop_url = store_url = str(request.getfixturevalue("fresh_postgres_url"))
        monkeypatch.setenv("RECSYS_DATABASE_URL", store_url)
    shop = sa.create_engine(shop_url)
    fill(shop)
    shop.dispose()
    sources_file = write_sources(tmp_path / "recsys.toml", shop_url)
    monkeypatch.setenv("RECSYS_SOURCES_FILE", str(sources_file))
    store = create_engine(store_url)
    upgrade(store)
    yield store
    store.dispose()


def run(names: list[str] | None = None) -> tuple[State[Any], str]:
    """One run of the flow: its final state and its report artifact's markdown."""
    state = sync_flow(names=names, return_state=True)
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["sync-report"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            )
        )
    return state, str(artifact.data)


def task_run_names(flow_run_id: UUID | None) -> list[str]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return sorted(r.name for r in runs)


def count(store: sa.Engine, event_type: str) -> int:
    """Events of the shop's items (the home holds synthetic events too)."""
    with store.connect() as conn:
        sql = (
            "SELECT count(*) FROM interactions JOIN items ON items.id = interactions.item_id "
            "WHERE event_type = :t AND items.external_id LIKE 'sku-%'"
        )
        return int(conn.execute(sa.text(sql), {"t": event_type}).scalar_one())


def test_sync_flow_syncs_every_source_in_its_own_task_and_reports_the_counts(
    shop_home: sa.Engine,
) -> None:
    state, report = run()
    assert state.is_completed(), state
    by_source = {r["source"]: r for r in state.result()["sources"]}  # type: ignore[union-attr]
    assert list(by_source) == SOURCES
    purchases = by_source["purchases"]
    assert purchases["status"] == "synced"
    assert (purchases["rows_read"], purchases["rows_inserted"], purchases["rows_rejected"]) == (
        8,
        PURCHASES_STORED,
        2,
    )
    assert (purchases["watermark_before"], purchases["watermark"]) == (None, "8")
    assert by_source["views"]["rows_inserted"] == 10
    assert count(shop_home, "purchase") == PURCHASES_STORED and count(shop_home, "view") == 10
    assert task_run_names(state.state_details.flow_run_id) == sorted(f"sync-{s}" for s in SOURCES)

    assert report.startswith("# Source sync\n")
    assert "| purchases | events | synced | 8 | 6 | 0 | 2 | - | 8 |" in report
    assert "| views | events | synced | 10 | 10 | 0 | 0 | - | 2026-01-01" in report
    assert "| purchases | impossible_timestamp | 1 |" in report
    assert "| purchases | missing_id | 1 |" in report
    assert "| products | bad_id | 1 |" in report
    assert f"- purchases: `{purchases['rejects_file']}`" in report
    assert "Not synced" not in report

    again, report = run(["purchases", "views", "purchases"])
    assert again.is_completed(), again
    second = {r["source"]: r for r in again.result()["sources"]}  # type: ignore[union-attr]
    assert list(second) == ["purchases", "views"]
    assert second["purchases"]["rows_read"] == 0 and second["purchases"]["watermark"] == "8"
    assert second["views"]["rows_already_stored"] == 1  # the look-back re-read the last hour
    assert "| purchases | events | synced | 0 | 0 | 0 | 0 | 8 | 8 |" in report
    assert count(shop_home, "purchase") == PURCHASES_STORED and count(shop_home, "view") == 10


def test_a_source_another_sync_holds_is_skipped_and_the_run_succeeds(
    shop_home: sa.Engine,
) -> None:
    locks.acquire(shop_home, "source:views", holder="a sync elsewhere", ttl=timedelta(hours=1))
    state, report = run(["views", "customers"])
    assert state.is_completed(), state
    views, customers = state.result()["sources"]  # type: ignore[index]
    assert views["status"] == "skipped" and "held by a sync elsewhere" in views["reason"]
    assert customers["status"] == "synced" and customers["rows_inserted"] == 5
    assert "| views | events | skipped | 0 | 0 | 0 | 0 | - | - |" in report
    assert "- views (skipped): source:views is already running: held by a sync elsewhere" in report
    assert count(shop_home, "view") == 0


def test_only_transient_errors_are_retried_and_a_failure_stops_no_other_source(
    shop_home: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = sync_module.sync_source
    attempts: dict[str, int] = {}

    def flaky(store: sa.Engine, source: Any, *args: Any, **kwargs: Any) -> Any:
        attempts[source.name] = attempts.get(source.name, 0) + 1
        first = attempts[source.name] == 1
        if source.name == "purchases":  # a configuration error: never retried
            raise SourceError("source purchases: no column 'sku' for item", transient=False)
        if source.name == "views" and first:  # the source dropped the connection
            raise SourceError("source views: reading failed: connection lost", transient=True)
        if source.name == "customers" and first:  # the store dropped it
            raise OperationalError("INSERT ...", {}, Exception("server closed the connection"))
        if source.name == "products":  # lost its lock: not retried
            raise locks.LockHeldError("source:products: the lock expired")
        return real(store, source, *args, **kwargs)

    monkeypatch.setattr(sync_module, "sync_source", flaky)
    monkeypatch.setattr(sync_module.sync_source_task, "retry_delay_seconds", [0.1] * 3)
    state, report = run()
    assert state.is_failed(), state
    assert attempts == {"purchases": 1, "views": 2, "products": 1, "customers": 2}
    message = str(state.message) + str(state.result(raise_on_failure=False))
    assert "2 of 4 sources failed" in message and "no column 'sku'" in message
    assert count(shop_home, "view") == 10  # synced on its second try
    assert "| purchases | events | failed | - | - | - | - | - | - | - |" in report
    assert "- purchases (failed): source purchases: no column 'sku' for item" in report
    assert "- products (failed): source products: source:products: the lock expired" in report
    assert "| views | events | synced | 10 | 10 |" in report
    assert "| customers | users | synced | 5 | 0 | 5 |" in report  # users the views made


def test_transient_sync_error_reads_the_failed_state() -> None:
    from prefect.states import Failed

    def failed(error: Exception) -> State[Any]:
        return Failed(data=error)

    assert transient_sync_error(None, None, failed(SourceError("x", transient=True)))
    assert not transient_sync_error(None, None, failed(SourceError("x")))
    assert transient_sync_error(None, None, failed(OperationalError("x", {}, Exception("y"))))
    assert not transient_sync_error(None, None, failed(locks.LockHeldError("held")))
    assert not transient_sync_error(None, None, failed(ValueError("bug")))


def test_sync_report_escapes_cells() -> None:
    report = sync_report(
        [{"source": "a", "kind": "events", "status": "failed", "reason": "x | y\nz"}]
    )
    assert "- a (failed): x \\| y z" in report


@pytest.mark.slow
def test_recsys_sources_sync_flow_runs_the_flow(shop_home: sa.Engine) -> None:
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    recsys = str(Path(sys.executable).with_name("recsys"))
    done = subprocess.run(
        [recsys, "sources", "sync", "purchases", "--flow", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (purchases,) = json.loads(done.stdout.strip().splitlines()[-1])["sources"]
    assert purchases["status"] == "synced" and purchases["rows_inserted"] == PURCHASES_STORED
    assert count(shop_home, "purchase") == PURCHASES_STORED

    bad = subprocess.run(
        [recsys, "sources", "sync", "clicks", "--flow"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert bad.returncode == 1
    last = bad.stderr.strip().splitlines()[-1]
    assert last.endswith(
        "no source named 'clicks'; sources are purchases, views, products, customers"
    )
