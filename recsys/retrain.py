"""The decisions and the report of a retrain, as plain functions the retrain flow composes.

Whether there is new data since the champion, which candidate goes to the gate (best
validation score, never the test set), and the markdown report of the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from recsys import registry
from recsys.data.extract import SnapshotDescriptor
from recsys.data.validation import QualityReport
from recsys.experiment import Outcome
from recsys.registry import ModelRecord
from recsys.registry.promotion import GateDecision

DEFAULT_MODELS = ("sasrec", "gru4rec", "ease")
LOCK_NAME = "retrain"


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


@dataclass
class RetrainSummary:
    """What a retrain did; ``report`` is its markdown, ``rows`` the candidates' metric table."""

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

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


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
