"""What the pages show that takes a while to compute, each by the library calls the CLI makes:
the counts of ``recsys stats`` and the events per day, ``recsys online report``,
``recsys experiments status`` and ``recsys online drift``.

The dashboard only reads: where the CLI first rebuilds the ``attributions`` table, these
compute the same attributions in memory (:func:`recsys.online.attribution.attributions`) and
hand them over, so the numbers are the CLI's and nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, func, select

from recsys.config import Settings
from recsys.db import catalogue as catalogue_state
from recsys.db import queries
from recsys.db.schema import imports_table, impressions_table, interactions_table, users_table
from recsys.online.attribution import attributions
from recsys.online.drift import Drift, Thresholds, drift_signals, windows
from recsys.online.experiments import Experiment, get_experiment
from recsys.online.impressions import now_ms
from recsys.online.metrics import ArmMetrics, RatePoint, online_metrics, rates_over_time
from recsys.online.outcomes import experiment_status
from recsys.online.triggers import recent_triggers
from recsys.registry import RegistryError

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
# The online page's ranges: how far back, and the period of its charts.
RANGES: dict[str, tuple[int, int]] = {
    "24h": (DAY_MS, HOUR_MS),
    "7d": (7 * DAY_MS, DAY_MS),
    "30d": (30 * DAY_MS, DAY_MS),
}
DEFAULT_RANGE = "7d"
K = 10  # the rank cut-off of the online metrics, as the CLI's default


@dataclass(frozen=True)
class DataSummary:
    """``recsys stats`` (``stats``) and the events per UTC day and type."""

    stats: dict[str, Any]
    per_day: list[tuple[int, str, int]]


def data_summary(engine: Engine) -> DataSummary:
    return DataSummary(queries.stats(engine), queries.events_per_day(engine))


def data_token(engine: Engine) -> tuple[Any, ...]:
    """Cheap to read and moved by every write the data page counts (new events, imports,
    users or catalogue changes)."""
    with engine.connect() as conn:
        return (
            conn.execute(select(func.max(interactions_table.c.id))).scalar(),
            conn.execute(select(func.max(imports_table.c.id))).scalar(),
            conn.execute(select(func.max(users_table.c.id))).scalar(),
            catalogue_state.revision(engine),
        )


def online_token(engine: Engine) -> tuple[Any, ...]:
    """Moved by new impressions and new events."""
    with engine.connect() as conn:
        return (
            conn.execute(select(func.max(impressions_table.c.shown_at))).scalar(),
            conn.execute(select(func.max(interactions_table.c.id))).scalar(),
        )


def _clicks(settings: Settings) -> list[str]:
    return settings.click_events.split(",")


def _conversions(settings: Settings) -> list[str]:
    return settings.conversion_events.split(",")


@dataclass(frozen=True)
class OnlineView:
    """``recsys online report --since RANGE`` (``groups``) and the same per period
    (``points``), from ``since_ms`` to ``until_ms`` (when it was computed)."""

    range: str
    since_ms: int
    until_ms: int
    period_ms: int
    k: int
    groups: list[ArmMetrics]
    points: list[RatePoint]


def online_view(engine: Engine, settings: Settings, range_key: str, k: int = K) -> OnlineView:
    span, period = RANGES[range_key]
    until = now_ms()
    since = until - span
    attributed = attributions(
        engine, window_seconds=settings.attribution_window_seconds, since_ms=since
    )
    clicks, conversions = _clicks(settings), _conversions(settings)
    groups = online_metrics(
        engine,
        click_events=clicks,
        conversion_events=conversions,
        since_ms=since,
        k=k,
        attributed=attributed,
    )
    points = rates_over_time(
        engine,
        click_events=clicks,
        conversion_events=conversions,
        since_ms=since,
        period_ms=period,
        k=k,
        attributed=attributed,
    )
    return OnlineView(range_key, since, until, period, k, groups, points)


@dataclass(frozen=True)
class ExperimentView:
    """``recsys experiments status --id N --json`` (``data``) and its verdict in words."""

    experiment: Experiment
    data: dict[str, Any]
    verdict: str


def experiment_view(
    engine: Engine, settings: Settings, experiment_id: int, k: int = K
) -> ExperimentView:
    experiment = get_experiment(engine, experiment_id)
    if experiment.results is not None and experiment.status != "running":
        data: dict[str, Any] = {"experiment": experiment.report(), **experiment.results}
    else:
        data = experiment_numbers(engine, settings, experiment, k).report()
    return ExperimentView(experiment, data, verdict(data))


def experiment_numbers(engine: Engine, settings: Settings, experiment: Experiment, k: int) -> Any:
    """:func:`recsys.online.outcomes.experiment_status` on attributions computed in memory."""
    attributed = attributions(
        engine,
        window_seconds=settings.attribution_window_seconds,
        since_ms=experiment.started_ms,
    )
    return experiment_status(
        engine,
        experiment,
        click_events=_clicks(settings),
        conversion_events=_conversions(settings),
        window_seconds=settings.attribution_window_seconds,
        k=k,
        attributed=attributed,
    )


def verdict(data: dict[str, Any]) -> str:
    """What the click-through difference says so far, in one sentence."""
    experiment = data["experiment"]
    decided = ""
    if experiment.get("decision"):
        decided = f" Decided: {experiment['decision']} ({experiment.get('decision_reason')})."
    differences = data.get("differences") or []
    if not differences or differences[0].get("diff") is None:
        return "Not enough impressions in both arms yet." + decided
    ctr = differences[0]
    name = ctr["metric"]
    interval = f"[{ctr['ci_low']:+.4f}, {ctr['ci_high']:+.4f}]"
    if ctr["ci_low"] > 0:
        said = f"The challenger is better on {name}: {ctr['diff']:+.4f}, 95% interval {interval}"
    elif ctr["ci_high"] < 0:
        said = f"The challenger is worse on {name}: {ctr['diff']:+.4f}, 95% interval {interval}"
    else:
        said = (
            f"No significant difference on {name} yet: {ctr['diff']:+.4f}, "
            f"95% interval {interval} holds 0"
        )
    return f"{said}, p = {ctr['p_value']:.3g}.{decided}"


@dataclass(frozen=True)
class DriftView:
    """``recsys online drift`` (``drift``; None with the reason in ``message``) and the
    monitor's latest retrain triggers."""

    drift: Drift | None
    message: str | None
    window_seconds: float
    triggers: list[dict[str, Any]] = field(default_factory=list)


def drift_view(engine: Engine, settings: Settings) -> DriftView:
    triggers = recent_triggers(engine, limit=10)
    now = now_ms()
    _, baseline_since = windows(now, settings.drift_window_seconds, settings.drift_baseline_seconds)
    try:
        attributed = attributions(
            engine,
            window_seconds=settings.attribution_window_seconds,
            since_ms=baseline_since,
            until_ms=now,
        )
        found = drift_signals(
            engine,
            window_seconds=settings.drift_window_seconds,
            baseline_seconds=settings.drift_baseline_seconds,
            thresholds=Thresholds.from_settings(settings),
            click_events=_clicks(settings),
            conversion_events=_conversions(settings),
            now_ms=now,
            attributed=attributed,
        )
    except RegistryError as exc:
        return DriftView(None, str(exc), settings.drift_window_seconds, triggers)
    return DriftView(found, None, settings.drift_window_seconds, triggers)
