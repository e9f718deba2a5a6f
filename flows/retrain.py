"""The retrain flow: snapshot -> validate -> train candidates -> register -> gate -> publish.

Each task wraps one recsys call. One retrain runs at a time (a lock in the database); a
failed run leaves the registry's champion and the served model as they were.
Run it by hand with ``recsys retrain`` or ``python -m flows.retrain``: that takes the lock
before Prefect starts, so a retrain started while another runs stops at once (exit 0, status
``skipped``, "retrain is already running: held by ...") without starting a Prefect server.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from sqlalchemy import Engine

from flows.common import (
    DB_RETRIES,
    DB_RETRY_DELAYS,
    current_run_id,
    print_result,
    settings_and_engine,
    start_prefect_api,
    task_runner,
    transient_database_error,
)
from recsys import registry
from recsys.config import get_settings
from recsys.data.extract import Snapshot, extract
from recsys.data.splits import Protocol, Split, split
from recsys.data.validation import QualityReport, quality_report
from recsys.db import locks
from recsys.errors import RecsysError
from recsys.experiment import Outcome, train_and_evaluate
from recsys.models import spec
from recsys.pipeline import gate_candidate, register_and_gate
from recsys.registry import ModelRecord
from recsys.registry.promotion import GateDecision
from recsys.retrain import (
    DEFAULT_MODELS,
    LOCK_NAME,
    RetrainSummary,
    candidate_row,
    choose_candidate,
    render_report,
    unchanged_since_champion,
)

LOCK_TTL = timedelta(hours=12)


@task(
    name="extract",
    retries=DB_RETRIES,
    retry_delay_seconds=DB_RETRY_DELAYS,
    retry_condition_fn=transient_database_error,
    cache_policy=NO_CACHE,
)
def extract_task(engine: Engine) -> Snapshot:
    return extract(engine)


@task(name="quality_report", cache_policy=NO_CACHE)
def quality_report_task(snapshot: Snapshot) -> QualityReport:
    return quality_report(snapshot)


@task(name="split", cache_policy=NO_CACHE)
def split_task(snapshot: Snapshot, protocol: Protocol) -> Split:
    return split(snapshot, protocol)


@task(name="train_and_evaluate", cache_policy=NO_CACHE)
def train_task(
    engine: Engine,
    name: str,
    protocol: Protocol,
    snapshot: Snapshot,
    data: Split,
    threads: int,
    budget_seconds: float | None = None,
) -> Outcome:
    overrides: dict[str, Any] = {"threads": threads, "progress": False}
    if budget_seconds is not None:
        overrides["budget_seconds"] = budget_seconds
    return train_and_evaluate(
        engine, name, protocol, snapshot=snapshot, data=data, train_overrides=overrides
    )


@task(
    name="register",
    retries=DB_RETRIES,
    retry_delay_seconds=DB_RETRY_DELAYS,
    retry_condition_fn=transient_database_error,
    cache_policy=NO_CACHE,
)
def register_task(
    engine: Engine, outcome: Outcome, artifacts_dir: Path, run_id: str | None
) -> ModelRecord:
    actor = registry.actor(f"retrain flow run {run_id or '-'}")
    registered = register_and_gate(
        engine, outcome, artifacts_dir=artifacts_dir, actor=actor, flow_run_id=run_id, gate=False
    )
    return registered.record


@task(name="gate", cache_policy=NO_CACHE)
def gate_task(
    engine: Engine, version: int, outcome: Outcome, margin: float, metric: str
) -> GateDecision:
    actor = registry.actor(f"retrain flow run {current_run_id() or '-'}")
    return gate_candidate(engine, version, outcome, metric=metric, margin=margin, actor=actor)


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


def publish(
    summary: RetrainSummary, quality: QualityReport | None, decision: GateDecision | None
) -> str:
    """Prefect artifacts (markdown report, metrics table) and the same report on disk."""
    report = render_report(summary, quality, decision)
    settings, _ = settings_and_engine()
    reports = settings.home / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    path = reports / f"retrain-{summary.flow_run_id or 'local'}.md"
    path.write_text(report, encoding="utf-8")
    for row in summary.candidates:
        if row.get("artifact"):
            (Path(row["artifact"]) / "retrain-report.md").write_text(report, encoding="utf-8")
    summary.report_path = str(path)
    create_markdown_artifact(report, key="retrain-report", description=summary.reason[:200])
    if summary.candidates:
        create_table_artifact(
            summary.candidates, key="retrain-candidates", description="test metrics"
        )
    return str(path)


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
) -> dict[str, Any]:
    """Retrain ``models`` on the current data and promote the best one if it beats the champion."""
    logger = get_run_logger()
    models = list(models or DEFAULT_MODELS)
    for name in models:
        spec(name)  # unknown names fail before any work
    settings, engine = settings_and_engine()
    run_id = current_run_id()
    protocol: Protocol = split  # type: ignore[assignment]
    with locks.held(engine, LOCK_NAME, holder=f"flow run {run_id or os.getpid()}", ttl=LOCK_TTL):
        champion_before = registry.alias_version(engine, registry.CHAMPION)
        summary = RetrainSummary("failed", "", champion_before=champion_before, flow_run_id=run_id)
        snapshot = extract_task(engine)
        summary.snapshot = snapshot.descriptor.to_dict()
        quality = quality_report_task(snapshot)
        if not quality.ok:
            summary.reason = "validation failed: " + "; ".join(f.message for f in quality.errors)
            publish(summary, quality, None)
            raise RecsysError(summary.reason)
        skip = None if force else unchanged_since_champion(engine, snapshot.descriptor)
        if skip:
            summary.status, summary.reason = "skipped", skip
            summary.champion_after = champion_before
            publish(summary, quality, None)
            logger.info(skip)
            return summary.to_dict()

        data = split_task(snapshot, protocol)
        threads = max(1, (os.cpu_count() or 1) // max(1, min(len(models), 2)))
        futures = [
            train_task.submit(engine, name, protocol, snapshot, data, threads, budget_seconds)
            for name in models
        ]
        outcomes = [future.result() for future in futures]  # a failed training fails the run
        records = [register_task(engine, o, settings.artifacts_dir, run_id) for o in outcomes]
        summary.candidates = [candidate_row(o, r) for o, r in zip(outcomes, records, strict=True)]
        unservable = [r for r in records if r.status != registry.SERVABLE]
        if unservable:
            summary.reason = "; ".join(f"v{r.version} {r.family}: {r.error}" for r in unservable)
            summary.champion_after = registry.alias_version(engine, registry.CHAMPION)
            publish(summary, quality, None)
            raise RecsysError(f"export failed, nothing promoted: {summary.reason}")

        best = choose_candidate(outcomes, records)
        assert best is not None
        decision = gate_task(engine, records[best].version, outcomes[best], margin, metric)
        summary.gate = decision.to_dict()
        summary.champion_after = registry.alias_version(engine, registry.CHAMPION)
        if decision.promoted:
            summary.status = "promoted"
            summary.reason = f"v{records[best].version} ({outcomes[best].name}) is the new champion"
            if build_bento:
                summary.bento = build_bento_task(records[best].version)
            token = settings.admin_secret
            if service_url and token:
                summary.service_reload = reload_service_task(service_url, token)
            elif service_url:
                logger.warning(
                    "RECSYS_ADMIN_TOKEN is not set: the service picks v%d up at its next poll",
                    records[best].version,
                )
        else:
            summary.status = "kept"
            summary.reason = f"champion {_v(champion_before)} kept: {decision.reason}"
        publish(summary, quality, decision)
        logger.info(summary.reason)
        return summary.to_dict()


def _v(version: int | None) -> str:
    return "none" if version is None else f"v{version}"


def run_once(**parameters: Any) -> dict[str, Any]:
    """One retrain from the command line: the lock first, then Prefect, then the flow.

    The lock is taken before any Prefect server starts, so a second retrain started at the
    same moment stops here (a ``skipped`` result naming the holder) instead of starting a
    server of its own; the flow's own ``locks.held`` is then a no-op (see recsys.db.locks).
    """
    _, engine = settings_and_engine()
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


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the retrain flow once.")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--split", default="loo")
    parser.add_argument("--margin", type=float, default=0.0)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--build-bento", action="store_true")
    parser.add_argument("--service-url", default=get_settings().service_url)
    parser.add_argument("--budget-seconds", type=float, default=None)
    args = parser.parse_args()
    print_result(
        lambda: run_once(
            models=[m.strip() for m in args.models.split(",") if m.strip()],
            split=args.split,
            margin=args.margin,
            force=args.force,
            build_bento=args.build_bento,
            service_url=args.service_url,
            budget_seconds=args.budget_seconds,
        )
    )


if __name__ == "__main__":
    main()
