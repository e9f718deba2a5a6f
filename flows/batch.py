"""The batch flow: top-k for every user with the champion, into the ``recommendations`` table."""

from __future__ import annotations

import os
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
from recsys.batch import BatchResult, batch_recommend


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


@flow(name="batch-recommend")
def batch_recommend_flow(k: int = 10, batch_size: int = 256) -> dict[str, Any]:
    """Replace the stored recommendations with the champion's top-``k`` for every user."""
    result = batch_recommend_task(k, batch_size)
    summary = result.to_dict()
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


def run_once(k: int = 10, batch_size: int = 256) -> dict[str, Any]:
    """One batch run from the command line (``python -m flows batch``)."""
    start_prefect_api()  # one process at a time on a fresh Prefect home
    result: dict[str, Any] = batch_recommend_flow(k=k, batch_size=batch_size)
    return result
