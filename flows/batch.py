"""The batch flow: top-k for every user with the champion, into the ``recommendations`` table.

In one process by default. With ``RECSYS_BATCH_WORKERS`` > 1 (or the flow's ``workers``) the
users are cut into parts scored as tasks on a Dask cluster through prefect-dask: a
``LocalCluster`` of that many worker processes, or the scheduler at ``RECSYS_DASK_ADDRESS``.
Each part loads the pinned champion version once per worker; a part that fails is retried,
and since only the flow writes, once every part is back, in one transaction, a retried part
never adds rows twice.
"""

from __future__ import annotations

import os
import time
from functools import lru_cache
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import (
    DB_RETRIES,
    DB_RETRY_DELAYS,
    settings_and_engine,
    start_prefect_api,
    transient_database_error,
)
from recsys import registry
from recsys.artifacts import Artifact
from recsys.batch import BatchResult, Histories, Scored, batch_recommend, prepare, score_histories
from recsys.batch import store_batch as store
from recsys.errors import RecsysError

PARTS_PER_WORKER = 4  # parts a worker takes in turn: a slow one holds up less of the run


@task(
    name="batch_recommend",
    retries=DB_RETRIES,
    retry_delay_seconds=DB_RETRY_DELAYS,
    retry_condition_fn=transient_database_error,
    cache_policy=NO_CACHE,
)
def batch_recommend_task(k: int, batch_size: int) -> BatchResult:
    _, engine = settings_and_engine()
    artifact = registry.load_artifact(engine, registry.CHAMPION, threads=os.cpu_count())
    return batch_recommend(engine, artifact, k=k, batch_size=batch_size)


@task(name="prepare_users", cache_policy=NO_CACHE)
def prepare_task(version: int) -> Histories:
    _, engine = settings_and_engine()
    return prepare(registry.load_artifact(engine, version, threads=1), engine)


@task(name="score_part", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def score_part_task(version: int, users: Histories, k: int, batch_size: int) -> Scored:
    return score_histories(_artifact(version), users, k, batch_size)


@lru_cache(maxsize=2)
def _artifact(version: int) -> Artifact:
    """The version's artifact, loaded once per worker process (one onnxruntime thread)."""
    _, engine = settings_and_engine()
    return registry.load_artifact(engine, version, threads=1)


def dask_runner(workers: int, address: str | None) -> Any:
    """prefect-dask's task runner: the scheduler at ``address``, else a local cluster."""
    from prefect_dask.task_runners import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True}
    )


def batch_on_dask(k: int, batch_size: int, workers: int, address: str | None) -> BatchResult:
    """Score the users in parts on Dask, then store every part's lists in one transaction."""
    _, engine = settings_and_engine()
    version = registry.alias_version(engine, registry.CHAMPION)
    if version is None:
        raise RecsysError("no champion to score with: train and promote a version first")
    artifact = registry.load_artifact(engine, version, threads=1)
    started = time.perf_counter()
    users = prepare_task(version)
    parts = users.parts(workers * PARTS_PER_WORKER)
    with dask_runner(workers, address) as runner:
        futures = [
            runner.submit(
                score_part_task,
                {"version": version, "users": part, "k": k, "batch_size": batch_size},
            )
            for part in parts
        ]
        scored = Scored.concat([future.result() for future in futures])
    return store(engine, artifact, users.user_ids, scored, time.perf_counter() - started)


@flow(name="batch-recommend")
def batch_recommend_flow(
    k: int = 10, batch_size: int = 256, workers: int | None = None
) -> dict[str, Any]:
    """Replace the stored recommendations with the champion's top-``k`` for every user.

    ``workers`` (default: the ``batch_workers`` setting) > 1, or a ``dask_address`` setting,
    scores on Dask.
    """
    settings, _ = settings_and_engine()
    workers = settings.batch_workers if workers is None else workers
    if workers > 1 or settings.dask_address:
        result = batch_on_dask(k, batch_size, workers, settings.dask_address)
    else:
        result = batch_recommend_task(k, batch_size)
    summary = result.to_dict() | {
        "workers": workers,
        "dask": bool(workers > 1 or settings.dask_address),
    }
    create_markdown_artifact(
        "# Batch recommendations\n\n"
        + "\n".join(f"- {key}: {value}" for key, value in summary.items())
        + "\n",
        key="batch-recommendations",
    )
    get_run_logger().info(
        "%d users scored with v%d at %.0f users/s",
        result.users,
        result.model_version,
        result.users_per_second,
    )
    return summary


def run_once(k: int = 10, batch_size: int = 256, workers: int | None = None) -> dict[str, Any]:
    """One batch run from the command line (``python -m flows batch``)."""
    start_prefect_api()  # one process at a time on a fresh Prefect home
    result: dict[str, Any] = batch_recommend_flow(k=k, batch_size=batch_size, workers=workers)
    return result
