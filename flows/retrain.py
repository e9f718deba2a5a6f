"""The retrain flow: snapshot -> validate -> train candidates -> register -> gate -> publish.

Each task wraps one library call (the steps and decisions are in :mod:`recsys.retrain`,
registering and gating in :mod:`recsys.pipeline`); the flow only composes them. One retrain
runs at a time (a lock in the database); a failed run leaves the registry's champion and the
served model as they were.
Run it by hand with ``recsys retrain`` (``python -m flows retrain '{...}'``): that takes the lock
before Prefect starts, so a retrain started while another runs stops at once (exit 0, status
``skipped``, "retrain is already running: held by ...") without starting a Prefect server.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from sqlalchemy import Engine

from flows.common import (
    DB_RETRIES,
    DB_RETRY_DELAYS,
    current_run_id,
    free_lock_of_ended_run,
    run_holder,
    settings_and_engine,
    start_prefect_api,
    task_runner,
    transient_database_error,
)
from recsys import registry
from recsys.config import Settings
from recsys.data.extract import Snapshot, SnapshotDescriptor, extract, window_start
from recsys.data.splits import Protocol, Split, split
from recsys.data.validation import QualityReport, quality_report
from recsys.db import locks
from recsys.errors import RecsysError
from recsys.experiment import Outcome, train_and_evaluate
from recsys.experiment import refit as refit_model
from recsys.pipeline import gate_candidate, register_and_gate
from recsys.registry import ModelRecord
from recsys.registry.promotion import GateDecision
from recsys.retrain import (
    LOCK_NAME,
    RetrainSummary,
    Step,
    add_online,
    adopt_refit,
    begin,
    check_data,
    check_exports,
    choose_candidate,
    conclude,
    gate_actor,
    model_names,
    train_threads,
    tuned_settings,
    with_settings,
    write_report,
)
from recsys.tuned import TunedSettings

LOCK_TTL = timedelta(hours=12)


@task(
    name="begin",
    retries=DB_RETRIES,
    retry_delay_seconds=DB_RETRY_DELAYS,
    retry_condition_fn=transient_database_error,
    cache_policy=NO_CACHE,
)
def begin_task(engine: Engine, run_id: str | None) -> RetrainSummary:
    return begin(engine, run_id)


@task(name="online-metrics", cache_policy=NO_CACHE)
def online_task(engine: Engine, summary: RetrainSummary, settings: Settings) -> RetrainSummary:
    return add_online(
        engine,
        summary,
        click_events=settings.click_events.split(","),
        conversion_events=settings.conversion_events.split(","),
        window_seconds=settings.attribution_window_seconds,
    )


@task(
    name="extract",
    retries=DB_RETRIES,
    retry_delay_seconds=DB_RETRY_DELAYS,
    retry_condition_fn=transient_database_error,
    cache_policy=NO_CACHE,
)
def extract_task(engine: Engine, window_days: float | None) -> Snapshot:
    return extract(engine, after_ms=window_start(window_days))


@task(name="quality_report", cache_policy=NO_CACHE)
def quality_report_task(snapshot: Snapshot) -> QualityReport:
    return quality_report(snapshot)


@task(
    name="check_data",
    retries=DB_RETRIES,
    retry_delay_seconds=DB_RETRY_DELAYS,
    retry_condition_fn=transient_database_error,
    cache_policy=NO_CACHE,
)
def check_data_task(
    engine: Engine,
    summary: RetrainSummary,
    snapshot: SnapshotDescriptor,
    quality: QualityReport,
    force: bool,
) -> Step:
    return check_data(engine, summary, snapshot, quality, force=force)


@task(name="split", cache_policy=NO_CACHE)
def split_task(snapshot: Snapshot, protocol: Protocol) -> Split:
    return split(snapshot, protocol)


@task(
    name="tuned_settings",
    retries=DB_RETRIES,
    retry_delay_seconds=DB_RETRY_DELAYS,
    retry_condition_fn=transient_database_error,
    cache_policy=NO_CACHE,
)
def tuned_task(engine: Engine, names: list[str]) -> dict[str, TunedSettings | None]:
    return tuned_settings(engine, names)


@task(name="train_and_evaluate", cache_policy=NO_CACHE)
def train_task(
    engine: Engine,
    name: str,
    protocol: Protocol,
    snapshot: Snapshot,
    data: Split,
    threads: int,
    budget_seconds: float | None = None,
    nproc: int = 1,
    tuned: TunedSettings | None = None,
) -> Outcome:
    overrides: dict[str, Any] = {"threads": threads, "progress": False}
    if budget_seconds is not None:
        overrides["budget_seconds"] = budget_seconds
    with training_progress(name):
        return train_and_evaluate(
            engine,
            name,
            protocol,
            snapshot=snapshot,
            data=data,
            train_overrides=overrides,
            nproc=nproc,
            tuned=tuned,
        )


@task(name="refit", cache_policy=NO_CACHE)
def refit_task(engine: Engine, outcome: Outcome, version: int, nproc: int = 1) -> Outcome:
    with training_progress(f"{outcome.name}-refit"):
        return refit_model(engine, outcome, version, nproc=nproc, threads=train_threads(1))


PROGRESS = "progress"  # what the forwarded lines start with (`recsys demo` shows them)


class _Progress(logging.Handler):
    """The training loop's lines of one thread (one candidate) as the task run's log lines,
    and its epochs (of the maximum, or of the time budget, whichever is further) as the
    progress artifact ``training-NAME``."""

    def __init__(self, name: str, run_logger: Any, artifact_id: Any) -> None:
        super().__init__(logging.INFO)
        self.name, self.run_logger, self.artifact_id = name, run_logger, artifact_id
        self.thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread:
            return  # another candidate training at the same time
        try:
            found: dict[str, Any] | None = getattr(record, "progress", None)
            if found is None:
                self.run_logger.info("%s %s: %s", PROGRESS, self.name, record.getMessage())
                return
            budget = found.get("budget_seconds")
            done = found["epoch"] / found["max_epochs"]
            left = ""
            if budget:
                done = max(done, found["seconds"] / budget)
                left = f", {max(0.0, budget - found['seconds']):.0f} s left of {budget:g} s"
            self.run_logger.info(
                "%s %s: epoch %d/%d, valid %s %.4f (best %.4f at epoch %d), %.0f s%s",
                PROGRESS,
                self.name,
                found["epoch"],
                found["max_epochs"],
                found["metric"],
                found["valid"],
                found["best"],
                found["best_epoch"],
                found["seconds"],
                left,
            )
            if self.artifact_id is not None:
                update_progress_artifact(self.artifact_id, min(100.0, 100.0 * done))
        except Exception:  # progress must never fail a training
            self.handleError(record)


@contextmanager
def training_progress(name: str) -> Iterator[None]:
    """While a candidate trains in this thread: its epochs in the task run's logs and as a
    progress artifact (both in the Prefect UI)."""
    run_logger = get_run_logger()
    artifact_id: Any  # a UUID: the call is synchronous here
    try:
        artifact_id = create_progress_artifact(
            0.0, key=f"training-{name}", description=f"{name}: epochs of its maximum or budget"
        )
    except Exception:  # no artifact is no reason to stop
        artifact_id = None
    handler = _Progress(name, run_logger, artifact_id)
    training = logging.getLogger("recsys.training")
    with _listening:  # candidates train at once: the level is restored after the last one
        if not _listeners:
            _saved_level[:] = [training.level]
            if not training.isEnabledFor(logging.INFO):
                training.setLevel(logging.INFO)
        _listeners.append(handler)
        training.addHandler(handler)
    try:
        yield
    finally:
        with _listening:
            training.removeHandler(handler)
            _listeners.remove(handler)
            if not _listeners:
                training.setLevel(_saved_level[0])
        if artifact_id is not None:
            update_progress_artifact(artifact_id, 100.0)


_listening = threading.Lock()
_listeners: list[_Progress] = []
_saved_level: list[int] = []


@task(
    name="register",
    retries=DB_RETRIES,
    retry_delay_seconds=DB_RETRY_DELAYS,
    retry_condition_fn=transient_database_error,
    cache_policy=NO_CACHE,
)
def register_task(
    engine: Engine, outcome: Outcome, artifacts_dir: Path, run_id: str | None, actor: str
) -> ModelRecord:
    registered = register_and_gate(
        engine, outcome, artifacts_dir=artifacts_dir, actor=actor, flow_run_id=run_id, gate=False
    )
    return registered.record


@task(
    name="check_exports",
    retries=DB_RETRIES,
    retry_delay_seconds=DB_RETRY_DELAYS,
    retry_condition_fn=transient_database_error,
    cache_policy=NO_CACHE,
)
def check_exports_task(
    engine: Engine, summary: RetrainSummary, outcomes: list[Outcome], records: list[ModelRecord]
) -> Step:
    return check_exports(engine, summary, outcomes, records)


@task(name="gate", cache_policy=NO_CACHE)
def gate_task(
    engine: Engine, version: int, outcome: Outcome, margin: float, metric: str, actor: str
) -> GateDecision:
    return gate_candidate(engine, version, outcome, metric=metric, margin=margin, actor=actor)


@task(
    name="conclude",
    retries=DB_RETRIES,
    retry_delay_seconds=DB_RETRY_DELAYS,
    retry_condition_fn=transient_database_error,
    cache_policy=NO_CACHE,
)
def conclude_task(
    engine: Engine,
    summary: RetrainSummary,
    outcome: Outcome,
    record: ModelRecord,
    decision: GateDecision,
) -> RetrainSummary:
    return conclude(engine, summary, outcome, record, decision)


@task(name="build_bento", retries=1, cache_policy=NO_CACHE)
def build_bento_task(version: int) -> str:
    """`python -m serving.bento` in a subprocess: flows never import serving."""
    done = subprocess.run(
        [sys.executable, "-m", "serving.bento", "--version", str(version)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        raise RecsysError(f"bento build failed: {done.stderr.strip().splitlines()[-1:]}")
    return str(json.loads(done.stdout.strip().splitlines()[-1])["bento"])


@task(name="reload_service", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def reload_service_task(service_url: str, token: str) -> dict[str, Any]:
    response = httpx.post(
        f"{service_url.rstrip('/')}/admin/reload",
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
    )
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


@task(name="report", cache_policy=NO_CACHE)
def report_task(
    summary: RetrainSummary,
    quality: QualityReport | None,
    decision: GateDecision | None,
    home: Path,
) -> RetrainSummary:
    """The report on disk (see ``write_report``) and as Prefect artifacts, with the metrics."""
    summary, report = write_report(summary, quality, decision, home=home)
    create_markdown_artifact(report, key="retrain-report", description=summary.reason[:200])
    if summary.candidates:
        create_table_artifact(
            summary.candidates, key="retrain-candidates", description="test metrics"
        )
    return summary


@flow(name="retrain", task_runner=task_runner())
def retrain_flow(
    models: list[str] | None = None,
    split: str = "loo",
    margin: float = 0.0,
    force: bool = False,
    metric: str = "ndcg@10",
    build_bento: bool = False,
    service_url: str | None = None,
    budget_seconds: float | None = None,
    window_days: float | None = None,
    nproc: int = 1,
    refit: bool | None = None,
) -> dict[str, Any]:
    """Retrain ``models`` on the current data and promote the best one if it beats the champion.

    ``window_days`` (default: the ``train_window_days`` setting, else every event) trains on
    the events of the last that many days only. ``nproc`` trains each learned candidate in
    that many processes (``torch.distributed``); registration happens once per candidate.
    ``refit`` (default: the ``refit`` setting) trains a promoted candidate again on every
    event, the held-out ones included, and makes that refit champion (see ``_refit``).
    """
    names = model_names(models)  # unknown names fail before any work
    settings, engine = settings_and_engine()
    window = settings.train_window_days if window_days is None else window_days
    window_start(window)  # and so does a window that is not a positive number of days
    run_id = current_run_id()
    protocol: Protocol = split  # type: ignore[assignment]
    freed = free_lock_of_ended_run(engine, LOCK_NAME)  # a retrain killed with its worker
    if freed:
        get_run_logger().warning("freed lock %s of %s", LOCK_NAME, freed)
    with locks.held(engine, LOCK_NAME, holder=run_holder(run_id), ttl=LOCK_TTL):
        summary = online_task(engine, begin_task(engine, run_id), settings)
        snapshot = extract_task(engine, window)
        quality = quality_report_task(snapshot)
        step = check_data_task(engine, summary, snapshot.descriptor, quality, force)
        if step.ends:
            return _finish(step, quality, None, settings.home)

        data = split_task(snapshot, protocol)
        threads = train_threads(len(names))
        found = tuned_task(engine, names)  # each candidate's latest tuned settings, if any
        summary = with_settings(step.summary, found)
        futures = [
            train_task.submit(
                engine, name, protocol, snapshot, data, threads, budget_seconds, nproc, found[name]
            )
            for name in names
        ]
        outcomes = [future.result() for future in futures]  # a failed training fails the run
        actor = gate_actor(run_id)
        records = [
            register_task(engine, o, settings.artifacts_dir, run_id, actor) for o in outcomes
        ]
        step = check_exports_task(engine, summary, outcomes, records)
        if step.ends:
            return _finish(step, quality, None, settings.home)

        best = choose_candidate(outcomes, records)
        assert best is not None  # every candidate is servable here
        record, outcome = records[best], outcomes[best]
        decision = gate_task(engine, record.version, outcome, margin, metric, actor)
        summary = conclude_task(engine, step.summary, outcome, record, decision)
        if decision.promoted and (settings.refit if refit is None else refit):
            summary = _refit(engine, summary, outcome, record, settings, run_id, actor, nproc)
        if decision.promoted:
            assert summary.champion_after is not None
            summary = _publish(
                summary, summary.champion_after, build_bento, service_url, settings.admin_secret
            )
        return _finish(Step(summary, ends=True), quality, decision, settings.home)


def _refit(
    engine: Engine,
    summary: RetrainSummary,
    outcome: Outcome,
    record: ModelRecord,
    settings: Settings,
    run_id: str | None,
    actor: str,
    nproc: int,
) -> RetrainSummary:
    """The promoted candidate trained again on every event; its refit serves when servable.

    A refit that fails leaves the gate's choice champion (and the run successful): the
    registry holds no half-made state, since the refit's version is registered like any other.
    """
    try:
        refitted = refit_task(engine, outcome, record.version, nproc)
        registered = register_task(engine, refitted, settings.artifacts_dir, run_id, actor)
    except Exception as exc:  # the gate's choice stands; the report says why
        get_run_logger().warning("refit of v%d failed: %s", record.version, exc)
        return adopt_refit(
            engine, summary, record, None, actor=actor, error=f"{type(exc).__name__}: {exc}"
        )
    return adopt_refit(engine, summary, record, registered, actor=actor)


def _publish(
    summary: RetrainSummary,
    version: int,
    build_bento: bool,
    service_url: str | None,
    token: str | None,
) -> RetrainSummary:
    """A new champion: build its bento if asked, and tell a running service to reload."""
    if build_bento:
        summary = replace(summary, bento=build_bento_task(version))
    if service_url and token:
        summary = replace(summary, service_reload=reload_service_task(service_url, token))
    elif service_url:
        get_run_logger().warning(
            "RECSYS_ADMIN_TOKEN is not set: the service picks v%d up at its next poll", version
        )
    return summary


def _finish(
    step: Step, quality: QualityReport, decision: GateDecision | None, home: Path
) -> dict[str, Any]:
    """Report the run; then raise its error, if it has one, or return its summary."""
    summary = report_task(step.summary, quality, decision, home)
    if step.error is not None:
        raise RecsysError(step.error)
    get_run_logger().info(summary.reason)
    return summary.to_dict()


def run_once(**parameters: Any) -> dict[str, Any]:
    """One retrain from the command line: the lock first, then Prefect, then the flow.

    The lock is taken before any Prefect server starts, so a second retrain started at the
    same moment stops here (a ``skipped`` result naming the holder) instead of starting a
    server of its own; the flow's own ``locks.held`` is then a no-op (see recsys.db.locks).
    """
    settings, engine = settings_and_engine()
    parameters.setdefault("service_url", settings.service_url)
    holder = f"retrain process {os.getpid()} on {socket.gethostname()}"
    with ExitStack() as stack:
        try:
            stack.enter_context(locks.held(engine, LOCK_NAME, holder=holder, ttl=LOCK_TTL))
        except locks.LockHeldError as exc:
            champion = registry.alias_version(engine, registry.CHAMPION)
            skipped = RetrainSummary(
                "skipped", str(exc), champion_before=champion, champion_after=champion
            )
            return skipped.to_dict()
        start_prefect_api()
        result: dict[str, Any] = retrain_flow(**parameters)
        return result
