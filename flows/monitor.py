"""The drift monitor: recent traffic against the champion's training, and a retrain when it
has moved too far, at most once per cool-down.

Each run attributes the events of the baseline and recent windows
(:func:`recsys.online.attribution.attribute`), computes the signals
(:func:`recsys.online.drift.drift_signals`) and publishes them as the ``drift-report``
markdown artifact. When a signal trips, the retrain deployment exists and the cool-down
allows (:func:`recsys.online.triggers.claim`, in the store's ``drift_triggers``), it creates
a run of that deployment with ``run_deployment(..., timeout=0)`` (the server starts it where
the deployment is served; the retrain's own concurrency limit still applies) and records the
run's id on the trigger. With no such deployment nothing is started and nothing recorded
(the report says so), so the cool-down is not spent on a retrain that never ran; a run that
could not be created marks its trigger failed, which frees the cool-down, and fails the
monitor's run. Run it by hand with ``python -m flows monitor``, on a cron with
``recsys schedule`` (:mod:`flows.deploy`).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
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
from flows.retrain import retrain_flow
from recsys.config import Settings
from recsys.errors import RecsysError
from recsys.online import triggers
from recsys.online.attribution import AttributionResult, attribute
from recsys.online.drift import Drift, Signal, Thresholds, drift_signals, windows
from recsys.online.impressions import now_ms as clock_ms
from recsys.registry import RegistryError

RETRAIN_DEPLOYMENT = f"{retrain_flow.name}/nightly"  # flows.deploy's default retrain
REPORT_KEY = "drift-report"
RUN_TAGS = ["recsys", "drift"]

DB_TASK: dict[str, Any] = {
    "retries": DB_RETRIES,
    "retry_delay_seconds": DB_RETRY_DELAYS,
    "retry_condition_fn": transient_database_error,
    "cache_policy": NO_CACHE,
}


@task(name="attribute", **DB_TASK)
def attribute_task(
    engine: Engine, window_seconds: float, since_ms: int, until_ms: int
) -> AttributionResult:
    return attribute(engine, window_seconds=window_seconds, since_ms=since_ms, until_ms=until_ms)


@task(name="drift_signals", **DB_TASK)
def drift_task(engine: Engine, settings: Settings, now_ms: int) -> Drift | str:
    """The signals, or why there are none (no servable champion)."""
    try:
        return drift_signals(
            engine,
            window_seconds=settings.drift_window_seconds,
            baseline_seconds=settings.drift_baseline_seconds,
            thresholds=Thresholds.from_settings(settings),
            click_events=settings.click_events.split(","),
            conversion_events=settings.conversion_events.split(","),
            now_ms=now_ms,
        )
    except RegistryError as exc:
        return str(exc)


@task(name="find_retrain_deployment", cache_policy=NO_CACHE)
def deployment_exists_task(name: str) -> bool:
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
        except ObjectNotFound:
            return False
    return True


@task(name="claim_cooldown", **DB_TASK)
def claim_task(
    engine: Engine, settings: Settings, drift: Drift, deployment: str, holder: str
) -> triggers.Claim:
    return triggers.claim(
        engine,
        now_ms=drift.now_ms,
        cooldown_seconds=settings.drift_cooldown_seconds,
        signals=[s.report() for s in drift.tripped],
        champion_version=drift.champion,
        deployment=deployment,
        monitor_run_id=current_run_id(),
        holder=holder,
    )


@task(name="start_retrain", cache_policy=NO_CACHE)
def start_retrain_task(name: str, trigger_id: int, triggered_at: int) -> str:
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    run = run_deployment(
        name=name,
        timeout=0,  # create the run and return: the deployment's server runs it
        tags=RUN_TAGS,
        idempotency_key=f"recsys-drift-{trigger_id}-{triggered_at}",
        as_subflow=False,
    )
    if not isinstance(run, FlowRun):  # a coroutine only in an event loop: not in a task
        run.close()
        raise RecsysError("start_retrain is synchronous: run it outside an event loop")
    return str(run.id)


@task(name="record_started", **DB_TASK)
def started_task(engine: Engine, trigger_id: int, run_id: str) -> None:
    triggers.started(engine, trigger_id, run_id)


@task(name="record_failed", **DB_TASK)
def failed_task(engine: Engine, trigger_id: int, error: str) -> None:
    triggers.failed(engine, trigger_id, error)


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def _cell(value: Any) -> str:
    return "-" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def _value(signal: Signal) -> str:
    return "-" if signal.value is None else f"{signal.value:.4f}"


def drift_report(drift: Drift | None, outcome: dict[str, Any]) -> str:
    """The run's markdown: the signals table, then what was done about them."""
    lines = ["# Drift", ""]
    if drift is None:
        lines += [f"No signals: {outcome['reason']}", ""]
        return "\n".join(lines)
    lines += [
        f"Champion v{drift.champion} (snapshot {drift.snapshot_at or 'unknown'}); recent "
        f"window {_time(drift.since_ms)} to {_time(drift.now_ms)}, click-through baseline "
        f"from {_time(drift.baseline_since_ms)}.",
        "",
        "| signal | value | threshold | tripped | n | detail |",
        "|---|---:|---:|---|---:|---|",
    ]
    for s in drift.signals:
        cells = [s.name, _value(s), s.threshold, "**yes**" if s.tripped else "no", f"{s.n:,}"]
        lines.append("| " + " | ".join(_cell(c) for c in [*cells, s.detail]) + " |")
    lines += ["", "## Retrain", "", f"{outcome['action']}: {outcome['reason']}", ""]
    return "\n".join(lines)


@flow(name="drift-monitor")
def monitor_flow(
    retrain_deployment: str = RETRAIN_DEPLOYMENT, now_ms: int | None = None
) -> dict[str, Any]:
    """Check the drift signals; start ``retrain_deployment`` when one trips (cool-down
    allowing). ``now_ms`` pins the clock (tests); by default it is now."""
    settings, engine = settings_and_engine()
    now = clock_ms() if now_ms is None else now_ms
    _, baseline_since = windows(now, settings.drift_window_seconds, settings.drift_baseline_seconds)
    logger = get_run_logger()
    try:
        attribute_task(engine, settings.attribution_window_seconds, baseline_since, now)
        checked = drift_task(engine, settings, now)
        drift = checked if isinstance(checked, Drift) else None
        outcome = _act(engine, settings, drift, checked, retrain_deployment)
    finally:
        engine.dispose()
    tripped = [] if drift is None else [s.name for s in drift.tripped]
    create_markdown_artifact(
        drift_report(drift, outcome),
        key=REPORT_KEY,
        description=f"{outcome['action']}; tripped: {', '.join(tripped) or 'none'}",
    )
    logger.info("drift: %s (%s)", outcome["action"], outcome["reason"])
    result = {
        **outcome,
        "tripped": tripped,
        "drift": None if drift is None else drift.report(),
    }
    if outcome["action"] == "failed":
        raise RecsysError(f"the retrain could not be started: {outcome['reason']}")
    return result


def _act(
    engine: Engine,
    settings: Settings,
    drift: Drift | None,
    checked: Drift | str,
    deployment: str,
) -> dict[str, Any]:
    """What the run does about the signals: nothing, or claim the cool-down and start."""
    base: dict[str, Any] = {"deployment": deployment, "trigger_id": None, "retrain_run_id": None}
    if drift is None:
        return {**base, "action": "no-champion", "reason": str(checked)}
    if not drift.tripped:
        return {**base, "action": "none", "reason": "no signal tripped"}
    if not deployment_exists_task(deployment):
        reason = f"no deployment named {deployment}: nothing started, nothing recorded"
        return {**base, "action": "no-deployment", "reason": reason}
    holder = f"drift monitor {current_run_id() or os.getpid()}"
    claim = claim_task(engine, settings, drift, deployment, holder)
    if claim.trigger_id is None:
        return {**base, "action": "cool-down", "reason": _held(claim, settings)}
    try:
        run_id = start_retrain_task(deployment, claim.trigger_id, drift.now_ms)
    except Exception as exc:  # recorded, the cool-down given back, the run fails after
        failed_task(engine, claim.trigger_id, str(exc) or type(exc).__name__)
        return {**base, "trigger_id": claim.trigger_id, "action": "failed", "reason": str(exc)}
    started_task(engine, claim.trigger_id, run_id)
    return {
        **base,
        "trigger_id": claim.trigger_id,
        "retrain_run_id": run_id,
        "action": "started",
        "reason": f"flow run {run_id} of {deployment} (trigger {claim.trigger_id})",
    }


def _held(claim: triggers.Claim, settings: Settings) -> str:
    holding = claim.holding
    if holding is None:
        return claim.reason
    until = int(holding["triggered_at"] + settings.drift_cooldown_seconds * 1000)
    run = holding.get("retrain_run_id") or "not yet created"
    return (
        f"trigger {holding['id']} started a retrain at {_time(holding['triggered_at'])} "
        f"(flow run {run}); the next may start after {_time(until)}"
    )


def run_once(retrain_deployment: str = RETRAIN_DEPLOYMENT) -> dict[str, Any]:
    """One check from the command line (``python -m flows monitor``)."""
    start_prefect_api()
    result: dict[str, Any] = monitor_flow(retrain_deployment=retrain_deployment)
    return result
