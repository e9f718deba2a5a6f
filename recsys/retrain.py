"""The retrain's steps and decisions, as plain functions the retrain flow composes.

A retrain: snapshot -> validate -> skip when nothing changed since the champion -> train the
candidates -> register them (:mod:`recsys.pipeline`) -> fail when an export is unservable ->
gate the candidate with the best validation score (never the test set) -> report. Each step
here takes the summary so far and returns the next one (or a :class:`Step` saying whether the
run ends there); nothing here knows about Prefect.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from recsys import registry
from recsys.config import DEFAULT_MODELS

if TYPE_CHECKING:
    from recsys.data.extract import SnapshotDescriptor
    from recsys.data.validation import QualityReport
    from recsys.experiment import Outcome
    from recsys.registry import ModelRecord
    from recsys.registry.promotion import GateDecision
    from recsys.tuned import TunedSettings

LOCK_NAME = "retrain"
REPORTS_FOLDER = "reports"
REPORT_FILE = "retrain-report.md"  # a copy of the report in each candidate's artifact folder

logger = logging.getLogger(__name__)


@dataclass
class RetrainSummary:
    """What a retrain did: its ``to_dict()`` is the flow's result; ``candidates`` are the rows
    of the candidates' metric table (:func:`candidate_row`)."""

    status: str  # promoted | kept | skipped | failed
    reason: str
    snapshot: dict[str, Any] | None = None
    champion_before: int | None = None
    champion_after: int | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    gate: dict[str, Any] | None = None
    flow_run_id: str | None = None
    report_path: str | None = None
    bento: str | None = None
    service_reload: dict[str, Any] | None = None
    online: list[dict[str, Any]] = field(default_factory=list)  # the last 7 days, served
    # Per candidate: the tuned settings it trained with (recsys.tuned), or "defaults".
    settings: dict[str, str] = field(default_factory=dict)
    # The promoted candidate trained again on every event (the ``refit`` setting): see adopt_refit.
    refit: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def model_names(models: Sequence[str] | None = None) -> list[str]:
    """The families to train (``DEFAULT_MODELS`` when none); an unknown one fails at once."""
    from recsys.models import spec  # torch: only when a retrain starts

    names = list(models or DEFAULT_MODELS)
    for name in names:
        spec(name)
    return names


def tuned_settings(engine: Engine, names: Sequence[str]) -> dict[str, TunedSettings | None]:
    """The latest tuned settings of each family (None: never tuned, it trains on defaults)."""
    from recsys.tuned import latest

    return {name: latest(engine, name) for name in names}


def with_settings(
    summary: RetrainSummary, found: dict[str, TunedSettings | None]
) -> RetrainSummary:
    """The summary saying which settings each candidate trains with, for the report."""
    said = {
        name: "defaults (never tuned)" if tuned is None else tuned.describe()
        for name, tuned in found.items()
    }
    return replace(summary, settings=said)


def train_threads(num_models: int) -> int:
    """Threads per candidate: the cores shared among the candidates trained at once (two)."""
    return max(1, (os.cpu_count() or 1) // max(1, min(num_models, 2)))


def gate_actor(flow_run_id: str | None) -> str:
    """Who moves the champion when a retrain's gate promotes."""
    return registry.actor(f"retrain flow run {flow_run_id or '-'}")


@dataclass(frozen=True)
class Step:
    """A retrain after one step: its summary, and whether the run ends there.

    With ``error`` the run ends by raising ``RecsysError(error)`` once its report is written.
    """

    summary: RetrainSummary
    ends: bool = False
    error: str | None = None


def begin(engine: Engine, flow_run_id: str | None) -> RetrainSummary:
    """A retrain's summary before any work: ``failed`` until decided, and the champion now."""
    champion = registry.alias_version(engine, registry.CHAMPION)
    return RetrainSummary("failed", "", champion_before=champion, flow_run_id=flow_run_id)


def add_online(
    engine: Engine,
    summary: RetrainSummary,
    *,
    click_events: Sequence[str],
    conversion_events: Sequence[str],
    window_seconds: float,
) -> RetrainSummary:
    """The summary with how the served versions did online over the last 7 days (none when
    nothing was served or logged; a failure to measure never fails the retrain)."""
    from recsys.online.metrics import recent_online_metrics, summary_row

    try:
        groups = recent_online_metrics(
            engine,
            click_events=click_events,
            conversion_events=conversion_events,
            window_seconds=window_seconds,
        )
    except Exception as exc:  # the report says so; the retrain goes on
        logger.warning("online metrics unavailable: %s", exc)
        return summary
    return replace(summary, online=[summary_row(g) for g in groups])


def check_data(
    engine: Engine,
    summary: RetrainSummary,
    snapshot: SnapshotDescriptor,
    quality: QualityReport,
    *,
    force: bool = False,
) -> Step:
    """Data that fails validation fails the run; data the champion was trained on skips it.

    ``force`` trains even on unchanged data.
    """
    summary = replace(summary, snapshot=snapshot.to_dict())
    if not quality.ok:
        reason = "validation failed: " + "; ".join(f.message for f in quality.errors)
        return Step(replace(summary, reason=reason), ends=True, error=reason)
    skip = None if force else unchanged_since_champion(engine, snapshot)
    if skip:
        skipped = replace(
            summary, status="skipped", reason=skip, champion_after=summary.champion_before
        )
        return Step(skipped, ends=True)
    return Step(summary)


def unchanged_since_champion(engine: Engine, snapshot: SnapshotDescriptor) -> str | None:
    """A skip message when the champion was trained on exactly this data, else None."""
    champion = registry.alias_version(engine, registry.CHAMPION)
    if champion is None:
        return None
    record = registry.get_version(engine, champion)
    if record.snapshot_digest == snapshot.digest:
        return (
            f"no new data since champion v{champion} (snapshot {snapshot.digest[:12]}, "
            f"{snapshot.num_interactions:,} interactions)"
        )
    return None


def choose_candidate(outcomes: list[Outcome], records: list[ModelRecord]) -> int | None:
    """Index of the servable candidate with the best validation score (None if none)."""
    best, best_valid = None, float("-inf")
    for n, (outcome, record) in enumerate(zip(outcomes, records, strict=True)):
        if record.status == registry.SERVABLE and outcome.training.best_valid > best_valid:
            best, best_valid = n, outcome.training.best_valid
    return best


def check_exports(
    engine: Engine, summary: RetrainSummary, outcomes: list[Outcome], records: list[ModelRecord]
) -> Step:
    """The candidates' rows; any unservable export fails the run before a gate is run."""
    rows = [candidate_row(o, r) for o, r in zip(outcomes, records, strict=True)]
    summary = replace(summary, candidates=rows)
    unservable = [r for r in records if r.status != registry.SERVABLE]
    if not unservable:
        return Step(summary)
    reason = "; ".join(f"v{r.version} {r.family}: {r.error}" for r in unservable)
    champion = registry.alias_version(engine, registry.CHAMPION)
    failed = replace(summary, reason=reason, champion_after=champion)
    return Step(failed, ends=True, error=f"export failed, nothing promoted: {reason}")


def conclude(
    engine: Engine,
    summary: RetrainSummary,
    outcome: Outcome,
    record: ModelRecord,
    decision: GateDecision,
) -> RetrainSummary:
    """The summary after the gate on ``record``: ``promoted`` or ``kept``, and why."""
    champion = registry.alias_version(engine, registry.CHAMPION)
    summary = replace(summary, gate=decision.to_dict(), champion_after=champion)
    if decision.promoted:
        reason = f"v{record.version} ({outcome.name}) is the new champion"
        return replace(summary, status="promoted", reason=reason)
    reason = f"champion {_version(summary.champion_before)} kept: {decision.reason}"
    return replace(summary, status="kept", reason=reason)


def adopt_refit(
    engine: Engine,
    summary: RetrainSummary,
    measured: ModelRecord,
    refitted: ModelRecord | None,
    *,
    actor: str,
    error: str | None = None,
) -> RetrainSummary:
    """After the gate promoted ``measured``: its refit (:func:`recsys.experiment.refit`),
    registered as ``refitted``, becomes champion in its place when it is servable.

    A refit that failed (``error``) or is not servable leaves ``measured`` champion, which
    the gate chose on its own numbers, and the summary says why.
    """
    details: dict[str, Any] = {"of": measured.version}
    if refitted is not None:
        details |= {
            "version": refitted.version,
            "status": refitted.status,
            "epochs": (refitted.training or {}).get("epochs"),
            "train_events": (refitted.training or {}).get("split", {}).get("train_events"),
            "seconds": (refitted.training or {}).get("seconds"),
        }
    if error is None and refitted is None:
        error = "no refit was registered"
    elif error is None and refitted is not None and refitted.status != registry.SERVABLE:
        error = f"v{refitted.version} is {refitted.status}: {refitted.error}"
    if error is None and refitted is not None:
        try:
            registry.move_alias(
                engine,
                registry.CHAMPION,
                refitted.version,
                expected=measured.version,
                action="refit",
                actor=actor,
                reason=(
                    f"v{measured.version} trained again on every event of its snapshot "
                    f"(the held-out ones included); its test metrics stand for it"
                ),
                details=details,
            )
        except registry.RegistryError as exc:
            error = str(exc)
    if error is not None or refitted is None:
        details["error"] = error
        reason = f"{summary.reason}; its refit did not replace it ({error})"
        return replace(summary, refit=details, reason=reason)
    reason = (
        f"v{refitted.version} ({refitted.family}, v{measured.version} refit on every event) "
        "is the new champion"
    )
    champion = registry.alias_version(engine, registry.CHAMPION)
    return replace(summary, refit=details, reason=reason, champion_after=champion)


def report_path(home: Path, flow_run_id: str | None) -> Path:
    """Where a retrain's report is written: ``reports/retrain-<flow run id | local>.md``."""
    return home / REPORTS_FOLDER / f"retrain-{flow_run_id or 'local'}.md"


def write_report(
    summary: RetrainSummary,
    quality: QualityReport | None,
    decision: GateDecision | None,
    *,
    home: Path,
) -> tuple[RetrainSummary, str]:
    """Write the run's report under ``home`` and into each candidate's artifact folder, and
    beside it the same as data (``.json``: the summary and the quality report, for readers
    such as the dashboard).

    Returns the summary with its ``report_path`` and the report (markdown).
    """
    report = render_report(summary, quality, decision)
    path = report_path(home, summary.flow_run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report, encoding="utf-8")
    data = {
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "summary": replace(summary, report_path=str(path)).to_dict(),
        "quality": None if quality is None else quality.to_dict(),
    }
    path.with_suffix(".json").write_text(json.dumps(data, default=str), encoding="utf-8")
    for row in summary.candidates:
        if row.get("artifact"):
            (Path(row["artifact"]) / REPORT_FILE).write_text(report, encoding="utf-8")
    return replace(summary, report_path=str(path)), report


def candidate_row(outcome: Outcome, record: ModelRecord) -> dict[str, Any]:
    metrics = outcome.test.summary()
    parity = record.parity or {}
    row: dict[str, Any] = {
        "model": outcome.name,
        "version": record.version,
        "status": record.status,
        "best_valid": round(outcome.training.best_valid, 4),
        "epochs": outcome.training.epochs_run,
        "train_seconds": round(outcome.training.seconds, 1),
        "settings": "defaults" if outcome.tuned is None else f"tuned #{outcome.tuned['id']}",
        "parity_max_abs_diff": parity.get("max_abs_diff"),
        "artifact": record.artifact_path,
    }
    for key in ("ndcg@10", "hr@10", "mrr@10", "recall@10"):
        if key in metrics:
            stats = metrics[key]
            row[key] = round(stats["value"], 4)
            row[f"{key} ci"] = f"[{stats['ci_low']:.4f}, {stats['ci_high']:.4f}]"
    return row


def render_report(
    summary: RetrainSummary,
    quality: QualityReport | None,
    decision: GateDecision | None,
) -> str:
    """The run's report in markdown: data, validation, candidates, gate decision, artifacts."""
    lines = [f"# Retrain: {summary.status}", "", summary.reason, ""]
    if summary.flow_run_id:
        lines += [f"Flow run: `{summary.flow_run_id}`", ""]
    snap = summary.snapshot
    if snap:
        lines += [
            "## Data snapshot",
            "",
            f"- digest `{snap['digest'][:16]}` ({snap['dialect']}, {snap['extracted_at']})",
            f"- {snap['num_interactions']:,} interactions, {snap['num_users']:,} users, "
            f"{snap['num_items']:,} items",
            "",
        ]
    if quality is not None:
        lines += ["## Validation", "", quality.to_markdown(), ""]
    if summary.settings:
        lines += ["## Settings (recsys tune)", ""]
        lines += [f"- {name}: {said}" for name, said in summary.settings.items()]
        lines.append("")
    if summary.candidates:
        keys = [k for k in summary.candidates[0] if k != "artifact"]
        lines += ["## Candidates (test metrics, 95% bootstrap CI)", ""]
        lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for row in summary.candidates:
            lines.append("| " + " | ".join(_cell(row.get(k)) for k in keys) + " |")
        lines += ["", "## Artifacts", ""]
        lines += [
            f"- v{row['version']} {row['model']}: `{row['artifact']}`" for row in summary.candidates
        ]
        lines.append("")
    if summary.online:
        keys = list(summary.online[0])
        lines += ["## Online metrics of the served versions (last 7 days, 95% intervals)", ""]
        lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(_cell(row[k]) for k in keys) + " |" for row in summary.online]
        lines.append("")
    if summary.bento or summary.service_reload:
        lines += ["## Published", ""]
        if summary.bento:
            lines.append(f"- bento `{summary.bento}`")
        if summary.service_reload:
            lines.append(f"- service reload: `{summary.service_reload}`")
        lines.append("")
    lines += ["## Champion", ""]
    lines.append(f"- before: {_version(summary.champion_before)}")
    lines.append(f"- after: {_version(summary.champion_after)}")
    if summary.refit:
        found = summary.refit
        if "error" in found:
            lines.append(f"- refit of v{found['of']}: not used ({found['error']})")
        else:
            lines.append(
                f"- refit: v{found['version']} is v{found['of']} trained again on every event "
                f"({_cell(found.get('train_events'))} events, {found.get('epochs')} epochs, "
                f"{_cell(found.get('seconds'))} s); v{found['of']}'s test metrics stand for it"
            )
    if decision is not None:
        lines += [
            "",
            "## Gate decision",
            "",
            f"- {'PROMOTED' if decision.promoted else 'not promoted'}: {decision.reason}",
            f"- metric {decision.metric}, margin {decision.margin:g}, against {decision.baseline}",
        ]
        if decision.diff is not None:
            lines.append(
                f"- candidate {decision.candidate_value:.4f} vs {decision.baseline_value:.4f}; "
                f"diff {decision.diff:+.4f}, 95% CI [{decision.ci_low:+.4f}, "
                f"{decision.ci_high:+.4f}], p={decision.p_value:.3f}, "
                f"{decision.wins} wins / {decision.losses} losses over {decision.num_users:,} users"
            )
    lines.append("")
    return "\n".join(lines)


def _version(version: int | None) -> str:
    return "none" if version is None else f"v{version}"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-3 and value != 0 else f"{value:.4f}"
    return str(value)
