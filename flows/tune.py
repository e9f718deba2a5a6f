"""The tune flow: for each model, its study (``recsys.tuning``) on the current data, the best
trial recorded as that model's tuned settings (which the next retrain trains with), and the
report: markdown and a PNG under the home's reports folder, published as Prefect artifacts.

Each task wraps one library call. No lock: two tune runs on the same data share their
studies (Optuna's RDB storage in our database), which is how several workers tune one model.
Run it by hand with ``recsys tune --flow`` (``python -m flows tune '{...}'``); the scheduled
re-tune is the ``tune`` deployment of :mod:`flows.deploy`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_image_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE
from sqlalchemy import Engine

from flows.common import (
    DB_RETRIES,
    DB_RETRY_DELAYS,
    current_run_id,
    settings_and_engine,
    start_prefect_api,
    transient_database_error,
)
from recsys.config import DEFAULT_MODELS
from recsys.data.extract import Snapshot
from recsys.data.features import SideInfo
from recsys.data.splits import Protocol, Split
from recsys.models import spec
from recsys.retrain import train_threads
from recsys.tune_report import data_url, render, write_report
from recsys.tuned import TunedSettings, record
from recsys.tuning import TuneResult, prepare, tune

# The retrain's default families that have something to tune (popularity has not).
TUNE_MODELS = tuple(name for name in DEFAULT_MODELS if spec(name).search_space)
DEFAULT_TRIALS = 30
DEFAULT_BUDGET_SECONDS = 3600.0  # per model


@task(
    name="prepare",
    retries=DB_RETRIES,
    retry_delay_seconds=DB_RETRY_DELAYS,
    retry_condition_fn=transient_database_error,
    cache_policy=NO_CACHE,
)
def prepare_task(
    engine: Engine, name: str, protocol: Protocol, window_days: float | None
) -> tuple[Snapshot, Split, SideInfo | None]:
    return prepare(engine, name, protocol, window_days)


@task(name="tune", cache_policy=NO_CACHE)
def tune_task(
    engine: Engine,
    name: str,
    data: Split,
    digest: str,
    side: SideInfo | None,
    trials: int,
    budget_seconds: float | None,
    overrides: dict[str, Any],
) -> TuneResult:
    return tune(
        engine,
        name,
        data,
        digest,
        trials=trials,
        budget_seconds=budget_seconds,
        side=side,
        train_overrides=overrides,
    )


@task(
    name="record",
    retries=DB_RETRIES,
    retry_delay_seconds=DB_RETRY_DELAYS,
    retry_condition_fn=transient_database_error,
    cache_policy=NO_CACHE,
)
def record_task(engine: Engine, result: TuneResult) -> TunedSettings:
    return record(engine, result.settings())


@task(name="tune_report", cache_policy=NO_CACHE)
def report_task(
    result: TuneResult, settings: TunedSettings, home: Path, run_id: str | None
) -> dict[str, str]:
    """The report on disk (see ``write_report``) and as artifacts: the markdown, the PNG
    (as a ``data:`` URL: no server hosts the file) and the trials as a table."""
    markdown_path, png_path, _ = write_report(result, settings, home=home, run_id=run_id)
    key = f"tune-{result.model}"
    create_markdown_artifact(
        render(result, settings, image=None),
        key=key,
        description=f"{result.model}: best valid {result.metric} {result.best_valid:.4f}",
    )
    create_image_artifact(
        data_url(png_path),
        key=f"{key}-plot",
        description=f"{result.model}: validation {result.metric} per trial; importances",
    )
    rows = [
        {"trial": t["number"], "state": t["state"], "valid": t["value"], **t["params"]}
        for t in result.trials
    ]
    create_table_artifact(rows, key=f"{key}-trials", description=f"{result.model}: the trials")
    return {"report": str(markdown_path), "plot": str(png_path)}


@flow(name="tune")
def tune_flow(
    models: list[str] | None = None,
    trials: int = DEFAULT_TRIALS,
    budget_seconds: float | None = DEFAULT_BUDGET_SECONDS,
    split: str = "loo",
    window_days: float | None = None,
    max_epochs: int | None = None,
) -> dict[str, Any]:
    """Tune each of ``models`` (default: the retrain's families that have a search space) for
    up to ``trials`` trials or ``budget_seconds`` each, and record their best settings."""
    names = list(models or TUNE_MODELS)
    for name in names:
        spec(name)  # unknown names fail before any work
    settings, engine = settings_and_engine()
    window = settings.train_window_days if window_days is None else window_days
    run_id = current_run_id()
    protocol: Protocol = split  # type: ignore[assignment]
    overrides: dict[str, Any] = {"threads": train_threads(1)}
    if max_epochs is not None:
        overrides["max_epochs"] = max_epochs
    tuned: list[dict[str, Any]] = []
    for name in names:
        snapshot, data, side = prepare_task(engine, name, protocol, window)
        result = tune_task(
            engine,
            name,
            data,
            snapshot.descriptor.digest,
            side,
            trials,
            budget_seconds,
            overrides,
        )
        found = record_task(engine, result)
        paths = report_task(result, found, settings.home, run_id)
        get_run_logger().info(
            "%s: best valid %s %.4f (trial #%d of %d)",
            name,
            result.metric,
            result.best_valid,
            result.best_trial,
            result.finished,
        )
        tuned.append(
            {
                **found.to_dict(),
                "importances": result.importances,
                "ran": result.ran,
                **paths,
            }
        )
    return {"flow_run_id": run_id, "tuned": tuned}


def run_once(**parameters: Any) -> dict[str, Any]:
    """One tune run from the command line (``python -m flows tune``)."""
    start_prefect_api()
    result: dict[str, Any] = tune_flow(**parameters)
    return result
