"""Chart.js configurations (plain JSON) built from what the library returns; each page embeds
them as data and ``static/dashboard.js`` draws them. Axes marked ``"recsysTime": true`` hold
epoch milliseconds shown as UTC times; a point with a ``note`` shows it in its tooltip."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from recsys.online.metrics import RatePoint
from recsys.registry import AliasMove, ModelRecord

PALETTE = (
    "#2563eb",
    "#dc2626",
    "#16a34a",
    "#9333ea",
    "#ea580c",
    "#0891b2",
    "#ca8a04",
    "#db2777",
    "#4b5563",
    "#65a30d",
)
GREY = "rgba(100, 116, 139, 0.35)"


def color(n: int, alpha: float | None = None) -> str:
    hex_color = PALETTE[n % len(PALETTE)]
    if alpha is None:
        return hex_color
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r}, {g}, {b}, {alpha})"


def day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d")


def hour(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%m-%d %H:00")


def events_per_day(per_day: Sequence[tuple[int, str, int]], max_bars: int = 400) -> dict[str, Any]:
    """Stacked bars of events per day and type (per week when the days would not fit)."""
    days = sorted({d for d, _, _ in per_day})
    step = 1 if len(days) <= max_bars else 7
    first = days[0] if days else 0
    bucket_ms = step * 86_400_000

    def bucket(d: int) -> int:
        return first + (d - first) // bucket_ms * bucket_ms

    buckets = sorted({bucket(d) for d in days})
    where = {b: n for n, b in enumerate(buckets)}
    kinds = sorted({kind for _, kind, _ in per_day})
    series = {kind: [0] * len(buckets) for kind in kinds}
    for d, kind, count in per_day:
        series[kind][where[bucket(d)]] += count
    return {
        "type": "bar",
        "data": {
            "labels": [day(b) for b in buckets],
            "datasets": [
                {"label": kind, "data": series[kind], "backgroundColor": color(n)}
                for n, kind in enumerate(kinds)
            ],
        },
        "options": {
            "animation": False,
            "maintainAspectRatio": False,
            "scales": {
                "x": {
                    "stacked": True,
                    "title": {"display": True, "text": "week" if step > 1 else "day (UTC)"},
                },
                "y": {
                    "stacked": True,
                    "beginAtZero": True,
                    "title": {"display": True, "text": "events"},
                },
            },
        },
    }


def headline(records: Sequence[ModelRecord], metric: str, champion: int | None) -> dict[str, Any]:
    """Each version's ``metric`` with its 95% interval (a floating bar), coloured by family,
    oldest first; the champion drawn as a star."""
    ordered = sorted((r for r in records if r.metric(metric) is not None), key=lambda r: r.version)
    labels = [f"v{r.version}" for r in ordered]
    families = sorted({r.family for r in ordered})
    intervals = []
    for r in ordered:
        stats = (r.metrics or {})[metric]
        low, high = stats.get("ci_low"), stats.get("ci_high")
        intervals.append(None if low is None or high is None else [low, high])
    datasets: list[dict[str, Any]] = [
        {
            "type": "bar",
            "label": "95% interval",
            "data": intervals,
            "backgroundColor": GREY,
            "maxBarThickness": 14,
            "order": 3,
        }
    ]
    for n, family in enumerate(families):
        datasets.append(
            {
                "type": "line",
                "label": family,
                "data": [r.metric(metric) if r.family == family else None for r in ordered],
                "showLine": False,
                "pointRadius": 3,
                "backgroundColor": color(n),
                "borderColor": color(n),
                "order": 1,
            }
        )
    datasets.append(
        {
            "type": "line",
            "label": "champion",
            "data": [r.metric(metric) if r.version == champion else None for r in ordered],
            "showLine": False,
            "pointStyle": "rectRot",
            "pointRadius": 8,
            "borderWidth": 2,
            "borderColor": "#111827",
            "backgroundColor": "#facc15",
            "order": 0,
        }
    )
    return {
        "type": "bar",
        "data": {"labels": labels, "datasets": datasets},
        "options": {
            "animation": False,
            "maintainAspectRatio": False,
            "scales": {
                "x": {"title": {"display": True, "text": "version"}},
                "y": {"title": {"display": True, "text": f"{metric} (test)"}},
            },
        },
    }


def champion_timeline(moves: Sequence[AliasMove], now_ms: int) -> dict[str, Any]:
    """The champion's version over time: a step at every move, each with who and why."""
    points: list[dict[str, Any]] = []
    for move in moves:
        at = int(move.occurred_at.replace(tzinfo=move.occurred_at.tzinfo or UTC).timestamp() * 1000)
        came_from = "none" if move.from_version is None else f"v{move.from_version}"
        points.append(
            {
                "x": at,
                "y": move.to_version,
                "note": f"{move.action} {came_from} -> v{move.to_version} by {move.actor}: "
                f"{move.reason}",
            }
        )
    if points:
        points.append({"x": max(now_ms, points[-1]["x"]), "y": points[-1]["y"], "note": "now"})
    return {
        "type": "line",
        "data": {
            "datasets": [
                {
                    "label": "champion version",
                    "data": points,
                    "stepped": "before",
                    "borderColor": color(0),
                    "backgroundColor": color(0),
                    "pointRadius": [5] * (len(points) - 1) + [0] if points else [],
                }
            ]
        },
        "options": {
            "animation": False,
            "maintainAspectRatio": False,
            "parsing": False,
            "plugins": {"legend": {"display": False}},
            "scales": {
                "x": {
                    "type": "linear",
                    "recsysTime": True,
                    "title": {"display": True, "text": "UTC"},
                },
                "y": {"ticks": {"precision": 0}, "title": {"display": True, "text": "version"}},
            },
        },
    }


def training_history(training: dict[str, Any] | None, metric: str) -> dict[str, Any] | None:
    """Validation score and loss per epoch of a version's training (None without epochs)."""
    history = (training or {}).get("history") or []
    if len(history) < 2:
        return None
    return {
        "type": "line",
        "data": {
            "labels": [h["epoch"] for h in history],
            "datasets": [
                {
                    "label": f"validation {metric}",
                    "data": [h["valid"] for h in history],
                    "borderColor": color(0),
                    "backgroundColor": color(0),
                    "yAxisID": "y",
                },
                {
                    "label": "training loss",
                    "data": [h["loss"] for h in history],
                    "borderColor": color(1),
                    "backgroundColor": color(1),
                    "yAxisID": "loss",
                },
            ],
        },
        "options": {
            "animation": False,
            "maintainAspectRatio": False,
            "scales": {
                "x": {"title": {"display": True, "text": "epoch"}},
                "y": {"position": "left", "title": {"display": True, "text": metric}},
                "loss": {"position": "right", "grid": {"drawOnChartArea": False}},
            },
        },
    }


def rates(
    points: Sequence[RatePoint], which: str, period_ms: int, since_ms: int, until_ms: int
) -> dict[str, Any]:
    """``which`` (ctr or conversion) per period from ``since_ms`` to ``until_ms`` for each
    version and arm: the value as a line and its 95% interval as a band."""
    first = since_ms // period_ms * period_ms
    periods = sorted({*range(first, until_ms, period_ms), *(p.period_start_ms for p in points)})
    where = {p: n for n, p in enumerate(periods)}
    label = hour if period_ms < 86_400_000 else day
    series: dict[tuple[int, str | None], list[RatePoint | None]] = {}
    for point in points:
        row = series.setdefault((point.model_version, point.arm), [None] * len(periods))
        row[where[point.period_start_ms]] = point
    datasets: list[dict[str, Any]] = []
    for n, ((version, arm), row) in enumerate(
        sorted(series.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))
    ):
        name = f"v{version}" + (f" {arm}" if arm else "")
        estimates = [None if p is None else getattr(p, which) for p in row]
        datasets += [
            {
                "label": f"{name} low",
                "data": [None if e is None else e.low for e in estimates],
                "borderWidth": 0,
                "pointRadius": 0,
                "fill": False,
                "recsysBand": True,
            },
            {
                "label": f"{name} 95% interval",
                "data": [None if e is None else e.high for e in estimates],
                "borderWidth": 0,
                "pointRadius": 0,
                "fill": "-1",
                "backgroundColor": color(n, 0.15),
                "recsysBand": True,
            },
            {
                "label": name,
                "data": [None if e is None else e.value for e in estimates],
                "borderColor": color(n),
                "backgroundColor": color(n),
                "spanGaps": True,
                "note": [None if p is None else f"{p.impressions:,} impressions" for p in row],
            },
        ]
    return {
        "type": "line",
        "data": {"labels": [label(p) for p in periods], "datasets": datasets},
        "options": {
            "animation": False,
            "maintainAspectRatio": False,
            "scales": {
                "y": {"beginAtZero": True, "title": {"display": True, "text": f"{which}@k"}},
                "x": {"title": {"display": True, "text": "UTC"}},
            },
        },
    }
