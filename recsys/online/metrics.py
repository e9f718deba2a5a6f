"""Online metrics of the served lists, per model version and experiment arm, with 95%
intervals: impressions, click-through and conversion rate at k, mean reciprocal rank of the
clicked item, catalogue coverage and the share of fallback answers.

Each metric is a mean over impressions (or, for the reciprocal rank, over clicked
impressions), so its interval is the normal one for a mean (Wilson's for a proportion).
Coverage (distinct items shown over the catalogue) is not a mean; its interval comes from
resampling impressions. The two-arm comparison of an experiment is :func:`compare`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pandas as pd
from sqlalchemy import Engine, func, select

from recsys.db.schema import attributions_table, impressions_table, items_table

Z95 = 1.959963984540054
COVERAGE_RESAMPLES = 200
MAX_COVERAGE_SAMPLE = 20_000
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Estimate:
    """A value with its 95% interval and how many observations it rests on."""

    value: float | None
    low: float | None
    high: float | None
    n: int

    def report(self) -> dict[str, Any]:
        return {
            "value": _round(self.value),
            "ci_low": _round(self.low),
            "ci_high": _round(self.high),
            "n": self.n,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def proportion(successes: int, n: int) -> Estimate:
    """Wilson's score interval: sound near 0 and 1, where most click-through rates live."""
    if n == 0:
        return Estimate(None, None, None, 0)
    p = successes / n
    denominator = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denominator
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denominator
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), n)


def mean(values: npt.ArrayLike) -> Estimate:
    """A mean with the normal interval (standard error from the sample)."""
    data = np.asarray(values, dtype=np.float64)
    n = len(data)
    if n == 0:
        return Estimate(None, None, None, 0)
    m = float(data.mean())
    if n == 1:
        return Estimate(m, None, None, 1)
    half = Z95 * float(data.std(ddof=1)) / math.sqrt(n)
    return Estimate(m, m - half, m + half, n)


def coverage(lists: Sequence[Sequence[str]], catalogue: int, seed: int = 0) -> Estimate:
    """Distinct items shown / catalogue size, with a percentile interval from resampling
    lists (at most ``MAX_COVERAGE_SAMPLE`` lists per resample, scaled back)."""
    n = len(lists)
    if n == 0 or catalogue == 0:
        return Estimate(None, None, None, n)
    codes, flat_lengths = _codes(lists)
    distinct = int(codes.max(initial=-1)) + 1
    value = distinct / catalogue
    rng = np.random.default_rng(seed)
    lengths = np.asarray(flat_lengths, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    size = min(n, MAX_COVERAGE_SAMPLE)
    found = []
    for _ in range(COVERAGE_RESAMPLES):
        picked = rng.integers(0, n, size=size)
        # The items of the picked lists, in one gather: each list's start, then its positions.
        counts = lengths[picked]
        ends = np.cumsum(counts)
        positions = np.arange(ends[-1] if len(ends) else 0) + np.repeat(
            offsets[picked] - (ends - counts), counts
        )
        found.append(int(np.count_nonzero(np.bincount(codes[positions], minlength=distinct))))
    # A smaller sample shows fewer distinct items: centre the resamples on the full value.
    spread = np.asarray(found, dtype=np.float64) - float(np.mean(found))
    low, high = np.percentile(spread, [2.5, 97.5]) / catalogue + value
    return Estimate(value, max(0.0, float(low)), min(1.0, float(high)), n)


def _codes(lists: Sequence[Sequence[str]]) -> tuple[npt.NDArray[np.int64], list[int]]:
    flat = [item for shown in lists for item in shown]
    codes, _ = pd.factorize(pd.Series(flat, dtype=object))
    return codes.astype(np.int64), [len(shown) for shown in lists]


@dataclass(frozen=True)
class ArmMetrics:
    """The online metrics of one group of impressions (a version, an arm)."""

    model_version: int
    arm: str | None
    experiment_id: int | None
    impressions: int
    ctr: Estimate
    conversion: Estimate
    mrr: Estimate
    coverage: Estimate
    fallback_share: Estimate
    k: int
    clicked: FloatArray = field(repr=False, compare=False, default_factory=lambda: np.zeros(0))

    def report(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "arm": self.arm,
            "experiment_id": self.experiment_id,
            "impressions": self.impressions,
            f"ctr@{self.k}": self.ctr.report(),
            f"conversion@{self.k}": self.conversion.report(),
            "mrr": self.mrr.report(),
            "coverage": self.coverage.report(),
            "fallback_share": self.fallback_share.report(),
        }


def online_metrics(
    engine: Engine,
    *,
    click_events: Sequence[str],
    conversion_events: Sequence[str],
    since_ms: int = 0,
    until_ms: int | None = None,
    k: int = 10,
    experiment_id: int | None = None,
    attributed: pd.DataFrame | None = None,
) -> list[ArmMetrics]:
    """Metrics of the impressions shown in [since, until), per (version, arm, experiment).

    Reads the ``attributions`` table: run :func:`recsys.online.attribution.attribute` over
    the range first; or pass what :func:`recsys.online.attribution.attributions` computed for
    it as ``attributed``, and nothing is read from that table.
    """
    shown = _impressions(engine, since_ms, until_ms, experiment_id)
    if shown.empty:
        return []
    credited = _credited(engine, since_ms) if attributed is None else _since(attributed, since_ms)
    return arm_metrics(
        shown,
        credited,
        _catalogue_size(engine),
        click_events=click_events,
        conversion_events=conversion_events,
        k=k,
    )


def arm_metrics(
    shown: pd.DataFrame,
    credited: pd.DataFrame,
    catalogue: int,
    *,
    click_events: Sequence[str],
    conversion_events: Sequence[str],
    k: int = 10,
) -> list[ArmMetrics]:
    """:func:`online_metrics` of impressions already read (``shown``: id, model_version, arm,
    experiment_id, fallback, items) and their credited events (``credited``: impression_id,
    rank, event_type), with ``catalogue`` items in the store."""
    out: list[ArmMetrics] = []
    if shown.empty:
        return out
    keys = ["model_version", "arm", "experiment_id"]
    first_click, converted = _responses(credited, click_events, conversion_events, k)
    for key, group in shown.groupby(keys, dropna=False, sort=True):
        version, arm, experiment = cast(tuple[Any, Any, Any], key)
        ids = group["id"]
        clicked = ids.isin(first_click.index).to_numpy()
        reciprocal = 1.0 / first_click.reindex(ids[clicked]).to_numpy(dtype=np.float64)
        out.append(
            ArmMetrics(
                model_version=int(version),
                arm=None if pd.isna(arm) else str(arm),
                experiment_id=None if pd.isna(experiment) else int(experiment),
                impressions=len(group),
                ctr=proportion(int(clicked.sum()), len(group)),
                conversion=proportion(int(ids.isin(converted).sum()), len(group)),
                mrr=mean(reciprocal),
                coverage=coverage(group["items"].tolist(), catalogue),
                fallback_share=proportion(int(group["fallback"].notna().sum()), len(group)),
                k=k,
                clicked=clicked.astype(np.float64),
            )
        )
    return out


def _responses(
    credited: pd.DataFrame, click_events: Sequence[str], conversion_events: Sequence[str], k: int
) -> tuple[pd.Series, set[str]]:
    """The rank of each impression's first click within ``k``, and the converted impressions."""
    clicks = credited[credited["event_type"].isin(list(click_events))]
    buys = credited[credited["event_type"].isin(list(conversion_events))]
    first_click = clicks[clicks["rank"] <= k].groupby("impression_id")["rank"].min()
    return first_click, set(buys.loc[buys["rank"] <= k, "impression_id"])


@dataclass(frozen=True)
class RatePoint:
    """Click-through and conversion at k of one version and arm in one period."""

    period_start_ms: int
    model_version: int
    arm: str | None
    impressions: int
    ctr: Estimate
    conversion: Estimate

    def report(self) -> dict[str, Any]:
        return {
            "period_start_ms": self.period_start_ms,
            "model_version": self.model_version,
            "arm": self.arm,
            "impressions": self.impressions,
            "ctr": self.ctr.report(),
            "conversion": self.conversion.report(),
        }


def rates_over_time(
    engine: Engine,
    *,
    click_events: Sequence[str],
    conversion_events: Sequence[str],
    since_ms: int,
    period_ms: int,
    until_ms: int | None = None,
    k: int = 10,
    attributed: pd.DataFrame | None = None,
) -> list[RatePoint]:
    """Click-through and conversion rates at k, with Wilson 95% intervals, per version and arm
    and per period of ``period_ms`` (periods start at multiples of it since the epoch: UTC
    hours, days; the first may hold less than a period, from ``since_ms``). An impression
    belongs to the period it was shown in; its clicks count whenever they came. Reads what
    :func:`online_metrics` reads."""
    if period_ms <= 0:
        raise ValueError(f"period_ms must be positive, got {period_ms}")
    shown = _impressions(engine, since_ms, until_ms, None)
    if shown.empty:
        return []
    credited = _credited(engine, since_ms) if attributed is None else _since(attributed, since_ms)
    first_click, converted = _responses(credited, click_events, conversion_events, k)
    shown = shown.assign(period=shown["shown_at"].astype(np.int64) // period_ms * period_ms)
    out: list[RatePoint] = []
    for key, group in shown.groupby(["period", "model_version", "arm"], dropna=False, sort=True):
        period, version, arm = cast(tuple[Any, Any, Any], key)
        ids = group["id"]
        out.append(
            RatePoint(
                period_start_ms=int(period),
                model_version=int(version),
                arm=None if pd.isna(arm) else str(arm),
                impressions=len(group),
                ctr=proportion(int(ids.isin(first_click.index).sum()), len(group)),
                conversion=proportion(int(ids.isin(converted).sum()), len(group)),
            )
        )
    return out


def recent_online_metrics(
    engine: Engine,
    *,
    click_events: Sequence[str],
    conversion_events: Sequence[str],
    window_seconds: float,
    days: float = 7.0,
    k: int = 10,
    now_ms: int | None = None,
) -> list[ArmMetrics]:
    """The online metrics of the last ``days``, attribution rebuilt for that range first."""
    from recsys.online.attribution import attribute
    from recsys.online.impressions import now_ms as clock

    since = (clock() if now_ms is None else now_ms) - int(days * 86_400_000)
    attribute(engine, window_seconds=window_seconds, since_ms=since)
    return online_metrics(
        engine,
        click_events=click_events,
        conversion_events=conversion_events,
        since_ms=since,
        k=k,
    )


def summary_row(metrics: ArmMetrics) -> dict[str, Any]:
    """One line of a report: the version, arm, impressions and each metric with its interval."""
    row: dict[str, Any] = {
        "version": metrics.model_version,
        "arm": metrics.arm or "-",
        "impressions": metrics.impressions,
    }
    for name, estimate in (
        (f"ctr@{metrics.k}", metrics.ctr),
        (f"conversion@{metrics.k}", metrics.conversion),
        ("mrr", metrics.mrr),
        ("coverage", metrics.coverage),
        ("fallback share", metrics.fallback_share),
    ):
        row[name] = _interval_text(estimate)
    return row


def _interval_text(estimate: Estimate) -> str:
    if estimate.value is None:
        return "-"
    if estimate.low is None or estimate.high is None:
        return f"{estimate.value:.4f}"
    return f"{estimate.value:.4f} [{estimate.low:.4f}, {estimate.high:.4f}]"


def _impressions(
    engine: Engine, since_ms: int, until_ms: int | None, experiment_id: int | None
) -> pd.DataFrame:
    m = impressions_table.c
    stmt = select(
        m.id, m.model_version, m.arm, m.experiment_id, m.fallback, m["items"], m.shown_at
    ).where(m.shown_at >= since_ms)
    if until_ms is not None:
        stmt = stmt.where(m.shown_at < until_ms)
    if experiment_id is not None:
        stmt = stmt.where(m.experiment_id == experiment_id)
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    columns = ["id", "model_version", "arm", "experiment_id", "fallback", "items", "shown_at"]
    return pd.DataFrame(rows, columns=columns, dtype=object)


def _credited(engine: Engine, since_ms: int) -> pd.DataFrame:
    a = attributions_table.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(a.impression_id, a.rank, a.event_type).where(a.occurred_at >= since_ms)
        ).all()
    frame = pd.DataFrame(rows, columns=["impression_id", "rank", "event_type"])
    return frame.astype({"rank": np.int64})


def _since(attributed: pd.DataFrame, since_ms: int) -> pd.DataFrame:
    """The credited events of an attributions frame that :func:`_credited` would read."""
    rows = attributed[attributed["occurred_at"].astype(np.int64) >= since_ms]
    frame = rows[["impression_id", "rank", "event_type"]].reset_index(drop=True)
    return frame.astype({"rank": np.int64})


def _catalogue_size(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(items_table)).scalar_one())


@dataclass(frozen=True)
class Difference:
    """``b - a`` of a proportion between two arms, with its 95% interval and p-value."""

    metric: str
    a: float | None
    b: float | None
    diff: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    n_a: int
    n_b: int

    def report(self) -> dict[str, Any]:
        out = {k: _round(v) if isinstance(v, float) else v for k, v in self.__dict__.items()}
        return out


def compare(metric: str, successes_a: int, n_a: int, successes_b: int, n_b: int) -> Difference:
    """Two independent proportions: difference ``b - a`` with the unpooled (Wald) interval and
    the pooled two-sided z-test p-value."""
    if n_a == 0 or n_b == 0:
        return Difference(metric, None, None, None, None, None, None, n_a, n_b)
    pa, pb = successes_a / n_a, successes_b / n_b
    diff = pb - pa
    se = math.sqrt(pa * (1 - pa) / n_a + pb * (1 - pb) / n_b)
    pooled = (successes_a + successes_b) / (n_a + n_b)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    p_value = 1.0 if se0 == 0 else math.erfc(abs(diff) / se0 / math.sqrt(2))
    return Difference(metric, pa, pb, diff, diff - Z95 * se, diff + Z95 * se, p_value, n_a, n_b)
