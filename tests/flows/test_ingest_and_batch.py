"""The ingest and batch flows under a temporary Prefect server."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

import flows.ingest as ingest_module
from flows.batch import batch_recommend_flow
from flows.ingest import ingest_flow, rejects_report
from flows.retrain import retrain_flow
from recsys import registry
from recsys.db.engine import create_engine
from recsys.db.queries import user_history
from recsys.db.schema import recommendations_table
from recsys.ranking import recommend


def test_ingest_flow_counts_rejects_and_retries_a_transient_error(
    flow_home: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "seq.txt"
    source.write_text("alice a b c\nbob c d\n   \ncarol e\n", encoding="utf-8")
    real = ingest_module.ingest
    calls = {"n": 0}

    def flaky(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OperationalError("INSERT ...", {}, Exception("server closed the connection"))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ingest_module, "ingest", flaky)
    monkeypatch.setattr(ingest_module.ingest_task, "retry_delay_seconds", [0.1])
    result = ingest_flow(str(source), kind="sequences")
    assert calls["n"] == 2
    assert result["rows_inserted"] == 6
    assert result["rows_rejected"] == 1 and result["rejects_by_reason"] == {"empty_sequence": 1}
    assert Path(result["rejects_path"]).exists()


def test_ingest_flow_reads_an_event_file_with_the_cli_options(
    flow_home: dict[str, str], tmp_path: Path
) -> None:
    """The flow takes the same EventFileOptions as `recsys import csv` (one importer table)."""
    from recsys.data.import_kinds import EventFileOptions

    source = tmp_path / "events.tsv"
    source.write_text(
        "who|what|kind|stars\nu1|i1|view|4\nu1|i2|buy|7\nu2|i1|view|2\n", encoding="utf-8"
    )
    options = EventFileOptions(
        user_col="who",
        item_col="what",
        event_type_col="kind",
        rating_col="stars",
        max_rating=5,
        delimiter="|",
    )
    result = ingest_flow(str(source), kind="csv", options=options)
    assert result["rows_read"] == 3 and result["rows_inserted"] == 2
    assert result["rows_rejected"] == 1


def test_rejects_report_lists_reasons() -> None:
    from recsys.data.load import LoadResult

    result = LoadResult(1, "sequences", "x.txt", 5, 3, 0, 2, {"bad_id": 2}, "/r.csv", 2, 3, 0.1)
    text = rejects_report(result)
    assert "| bad_id | 2 |" in text and "rejected 2" in text


def test_batch_flow_writes_every_users_top_k_and_replaces_the_previous_batch(
    flow_home: dict[str, str],
) -> None:
    retrain_flow(models=["ease"])
    first = batch_recommend_flow(k=5)
    engine = create_engine(os.environ["RECSYS_DATABASE_URL"])
    artifact = registry.load_artifact(engine)
    with engine.connect() as conn:
        rows = conn.execute(select(recommendations_table)).all()
    assert first["users"] == 200 and len(rows) == first["rows"] == 200 * 5
    assert {r.batch_id for r in rows} == {first["batch_id"]}
    assert {r.model_version for r in rows} == {first["model_version"]}
    by_user: dict[str, list[tuple[int, str, float]]] = {}
    for r in rows:
        by_user.setdefault(r.user_id, []).append((r.rank, r.item_id, r.score))
    for user_id in ("u1", "u2", "u3"):
        ranked = sorted(by_user[user_id])
        assert [rank for rank, _, _ in ranked] == [1, 2, 3, 4, 5]
        scores = [score for _, _, score in ranked]
        assert scores == sorted(scores, reverse=True)
        assert not {item for _, item, _ in ranked} & set(user_history(engine, user_id) or [])
        one_by_one = recommend(artifact, user_history(engine, user_id) or [], k=5)
        assert [item for _, item, _ in ranked] == one_by_one.item_ids

    second = batch_recommend_flow(k=3)
    with engine.connect() as conn:
        batches = conn.execute(
            select(recommendations_table.c.batch_id, func.count()).group_by(
                recommendations_table.c.batch_id
            )
        ).all()
    assert batches == [(second["batch_id"], 200 * 3)]


def _table(engine: Any) -> list[tuple[str, int, str, float, int]]:
    t = recommendations_table.c
    with engine.connect() as conn:
        rows = conn.execute(select(t.user_id, t.rank, t.item_id, t.score, t.model_version)).all()
    return sorted(tuple(r) for r in rows)  # type: ignore[misc]


@pytest.mark.slow
def test_batch_flow_on_two_dask_workers_writes_the_single_process_table(
    flow_home: dict[str, str],
) -> None:
    retrain_flow(models=["ease"])
    engine = create_engine(os.environ["RECSYS_DATABASE_URL"])
    single = batch_recommend_flow(k=5)
    expected = _table(engine)
    parallel = batch_recommend_flow(k=5, workers=2)  # a LocalCluster of 2 worker processes
    assert parallel["dask"] is True and parallel["workers"] == 2
    assert (parallel["users"], parallel["rows"]) == (single["users"], single["rows"])
    found = _table(engine)
    assert [r[:3] + r[4:] for r in found] == [r[:3] + r[4:] for r in expected]
    assert all(abs(a[3] - b[3]) <= 1e-5 for a, b in zip(found, expected, strict=True))


@pytest.mark.slow
def test_a_failed_part_is_retried_and_adds_no_row_twice(
    flow_home: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from distributed import LocalCluster

    import flows.batch as batch_module

    retrain_flow(models=["ease"])
    engine = create_engine(os.environ["RECSYS_DATABASE_URL"])
    batch_recommend_flow(k=4)
    expected = _table(engine)
    real = batch_module.score_histories
    log = tmp_path / "calls.txt"  # the tasks reach the workers pickled: count in a file
    log.touch()

    def fails_once(artifact: Any, users: Any, k: int, batch_size: int = 256) -> Any:
        with log.open("a+") as out:  # locked: two workers start parts at once
            fcntl.flock(out, fcntl.LOCK_EX)
            out.write(f"{len(users)}\n")
            out.flush()
            out.seek(0)
            started = len(out.read().splitlines())
        if started == 2:  # the second part to start dies once
            raise ConnectionError("worker lost")
        return real(artifact, users, k, batch_size)

    monkeypatch.setattr(batch_module, "score_histories", fails_once)
    # Workers as threads of this process, so they run the patched function.
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False) as cluster:
        monkeypatch.setenv("RECSYS_DASK_ADDRESS", cluster.scheduler_address)
        result = batch_recommend_flow(k=4)
    assert result["dask"] is True
    calls = log.read_text().splitlines()
    assert len(calls) == result["workers"] * batch_module.PARTS_PER_WORKER + 1  # one retry
    assert _table(engine) == expected
