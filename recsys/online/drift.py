"""Drift: how far the recent traffic has moved from what the champion was trained on.

:func:`drift_signals` compares the window ``[now - window, now)`` with the champion's
training snapshot (its artifact's users, items and training popularity, and the snapshot's
extraction time) and returns one :class:`Signal` per question:

- ``unknown_users_requests``: of the ``recommend`` requests in the window (impressions with a
  user), the share whose user is not among the champion's training users. A user model
  answers them with the training popularity; a history model may still answer them from
  their live history, but has never learnt from them. (The share of those requests answered
  by the fallback, ``fallback = 'popular'``, is in the detail.)
- ``unknown_users_events``: of the events in the window, the share by such users.
- ``unknown_items_events``: of the events in the window, the share on items the champion was
  not trained on (it can never recommend them).
- ``new_items``: of the available catalogue, the share of items created since the champion's
  snapshot was extracted and unknown to it. Not a sample: no minimum applies.
- ``popularity_psi``: the population stability index of the window's events on known items
  against the champion's training popularity. Items are ordered by training popularity and
  cut into ``PSI_BINS`` bins of equal training mass (an item heavier than a bin fills several,
  leaving the others empty; items never seen in training join the last bin with any weight);
  each bin's share is floored at ``PSI_EPSILON`` so an empty bin stays finite:
  ``PSI = sum((recent - train) * ln(recent / train))``. Events on unknown items are left out
  (``unknown_items_events`` counts them). With no drift the index still has an expected value
  of about ``(bins - 1) / events`` from sampling alone, hence the minimum sample.
- ``ctr_drop``: the champion's click-through at ``k`` over the window against the same over
  the baseline window just before it (``[now - window - baseline, now - window)``), pooled
  over experiment arms, from :func:`recsys.online.metrics.online_metrics` (so attribute
  the events of both windows first). The value is the relative drop ``(base - recent) /
  base``; it trips only when that exceeds the threshold *and* the fall is significant at
  ``ctr_alpha`` (the two-sided p-value of the pooled z-test, default 0.001). The level is
  strict because the monitor tests again at every run: at 0.05, a monitor every 15 minutes
  would make about a hundred tests a day, and the ordinary wobble of click-through would
  trip some of them. A real fall of the threshold's size on the samples it needs is far past
  0.001. Clicks that have not arrived yet are not counted, so a window much shorter than the
  usual delay to a click reads low.

A signal trips when its value exceeds its threshold and it rests on at least ``min_samples``
observations (requests, events or impressions in each window); below that it reports its
value and never trips, so a quiet hour triggers nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from sqlalchemy import Engine, select

from recsys.db.schema import impressions_table, interactions_table, items_table, users_table
from recsys.online.metrics import compare, online_metrics
from recsys.registry.store import CHAMPION, RegistryError, alias_version, get_version, load_artifact

if TYPE_CHECKING:
    from recsys.artifacts import Artifact
    from recsys.config import Settings

PSI_BINS = 10
PSI_EPSILON = 1e-4
SIGNALS = (
    "unknown_users_requests",
    "unknown_users_events",
    "unknown_items_events",
    "new_items",
    "popularity_psi",
    "ctr_drop",
)


@dataclass(frozen=True)
class Thresholds:
    """When each signal trips, and the fewest observations a sampled signal needs."""

    unknown_users: float = 0.3
    unknown_items: float = 0.2
    new_items: float = 0.1
    psi: float = 0.2
    ctr_drop: float = 0.2
    ctr_alpha: float = 0.001
    min_samples: int = 200

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        return cls(
            unknown_users=settings.drift_unknown_users,
            unknown_items=settings.drift_unknown_items,
            new_items=settings.drift_new_items,
            psi=settings.drift_psi,
            ctr_drop=settings.drift_ctr_drop,
            ctr_alpha=settings.drift_ctr_alpha,
            min_samples=settings.drift_min_samples,
        )


@dataclass(frozen=True)
class Signal:
    """One drift measure: its value (None when it cannot be computed), its threshold,
    whether it tripped, how many observations it rests on and what it means in words."""

    name: str
    value: float | None
    threshold: float
    tripped: bool
    n: int
    detail: str
    facts: dict[str, Any] = field(default_factory=dict, compare=False)

    def report(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": None if self.value is None else round(self.value, 6),
            "threshold": self.threshold,
            "tripped": self.tripped,
            "n": self.n,
            "detail": self.detail,
            **({"facts": self.facts} if self.facts else {}),
        }


@dataclass(frozen=True)
class Drift:
    """The signals of one check, with the champion and the windows they compare."""

    champion: int
    now_ms: int
    since_ms: int
    baseline_since_ms: int
    snapshot_at: str | None
    signals: list[Signal]

    @property
    def tripped(self) -> list[Signal]:
        return [s for s in self.signals if s.tripped]

    def report(self) -> dict[str, Any]:
        return {
            "champion": self.champion,
            "now_ms": self.now_ms,
            "since_ms": self.since_ms,
            "baseline_since_ms": self.baseline_since_ms,
            "snapshot_at": self.snapshot_at,
            "tripped": [s.name for s in self.tripped],
            "signals": [s.report() for s in self.signals],
        }


def windows(now_ms: int, window_seconds: float, baseline_seconds: float) -> tuple[int, int]:
    """The start of the recent window and of the baseline before it (epoch ms)."""
    since = now_ms - int(window_seconds * 1000)
    return since, since - int(baseline_seconds * 1000)


def drift_signals(
    engine: Engine,
    *,
    window_seconds: float,
    baseline_seconds: float,
    thresholds: Thresholds,
    click_events: Sequence[str],
    conversion_events: Sequence[str],
    now_ms: int | None = None,
    k: int = 10,
    attributed: pd.DataFrame | None = None,
) -> Drift:
    """Every signal of the champion over ``[now - window, now)``; see the module's text.

    Raises :class:`RegistryError` when there is no champion. The click-through signal reads
    ``attributions``: run :func:`recsys.online.attribution.attribute` from the baseline's
    start (:func:`windows`) first, or pass what
    :func:`recsys.online.attribution.attributions` computed from there as ``attributed``.
    """
    now = int(time.time() * 1000) if now_ms is None else now_ms
    since, baseline_since = windows(now, window_seconds, baseline_seconds)
    version = alias_version(engine, CHAMPION)
    if version is None:
        raise RegistryError("there is no champion model: nothing to compare the traffic with")
    artifact = load_artifact(engine, version)
    snapshot = get_version(engine, version).snapshot or {}
    snapshot_at = snapshot.get("extracted_at")
    t = thresholds
    users = artifact.user_index
    items = artifact.item_index
    requests = _requests(engine, since, now)
    events = _events(engine, since, now)
    signals = [
        _requests_signal(requests, users, t),
        _share(
            "unknown_users_events",
            sum(u not in users for u, _ in events),
            len(events),
            t.unknown_users,
            t.min_samples,
            "events by users the champion was not trained on",
        ),
        _share(
            "unknown_items_events",
            sum(i not in items for _, i in events),
            len(events),
            t.unknown_items,
            t.min_samples,
            "events on items the champion was not trained on",
        ),
        _new_items(engine, items, snapshot_at, t.new_items),
        _psi_signal(artifact, [i for _, i in events], t),
        _ctr_signal(
            engine,
            version,
            now=now,
            since=since,
            baseline_since=baseline_since,
            thresholds=t,
            click_events=click_events,
            conversion_events=conversion_events,
            k=k,
            attributed=attributed,
        ),
    ]
    return Drift(version, now, since, baseline_since, snapshot_at, signals)


def _share(name: str, hits: int, n: int, threshold: float, min_samples: int, what: str) -> Signal:
    value = hits / n if n else None
    enough = n >= min_samples
    tripped = enough and value is not None and value > threshold
    detail = f"{hits:,} of {n:,} {what}"
    if not enough:
        detail += f" (fewer than {min_samples:,}: cannot trip)"
    return Signal(name, value, threshold, tripped, n, detail)


def _requests_signal(
    requests: list[tuple[str, str | None]], users: dict[str, int], t: Thresholds
) -> Signal:
    unknown = [fallback for user, fallback in requests if user not in users]
    signal = _share(
        "unknown_users_requests",
        len(unknown),
        len(requests),
        t.unknown_users,
        t.min_samples,
        "recommend requests for users the champion was not trained on",
    )
    popular = sum(f is not None for _, f in requests)
    facts = {
        "distinct_unknown_users": len({u for u, _ in requests if u not in users}),
        "fallback_share": round(popular / len(requests), 6) if requests else None,
    }
    return Signal(
        signal.name,
        signal.value,
        signal.threshold,
        signal.tripped,
        signal.n,
        signal.detail + f"; {popular:,} answered by the fallback",
        facts,
    )


def _new_items(
    engine: Engine, known: dict[str, int], snapshot_at: str | None, threshold: float
) -> Signal:
    cut = _utc(datetime.fromisoformat(snapshot_at)) if snapshot_at else None
    available = 0
    new = 0
    never = 0
    with engine.connect() as conn:
        rows = conn.execute(
            select(items_table.c.external_id, items_table.c.created_at).where(
                items_table.c.available.is_(True)
            )
        )
        for external_id, created_at in rows:
            available += 1
            if external_id in known:
                continue
            never += 1
            if cut is None or created_at is None or _utc(created_at) >= cut:
                new += 1
    value = new / available if available else None
    tripped = value is not None and new > 0 and value > threshold
    detail = (
        f"{new:,} of {available:,} available items were added since the snapshot "
        f"({snapshot_at or 'time unknown'}); {never:,} are unknown to the champion in all"
    )
    return Signal("new_items", value, threshold, tripped, available, detail)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def population_stability(
    train_counts: npt.ArrayLike,
    recent_columns: npt.ArrayLike,
    bins: int = PSI_BINS,
    epsilon: float = PSI_EPSILON,
) -> tuple[float | None, list[tuple[float, float]]]:
    """PSI of the items ``recent_columns`` (0-based columns of ``train_counts``) against the
    training counts, over bins of equal training mass; also each bin's (train, recent)
    shares. None when either side is empty."""
    counts = np.asarray(train_counts, dtype=np.float64)
    recent = np.asarray(recent_columns, dtype=np.int64)
    total = counts.sum()
    if total <= 0 or len(recent) == 0:
        return None, []
    order = np.argsort(-counts, kind="stable")
    sorted_counts = counts[order]
    before = np.cumsum(sorted_counts) - sorted_counts
    sorted_bins = np.minimum((before * bins // total).astype(np.int64), bins - 1)
    positive = np.flatnonzero(sorted_counts > 0)
    sorted_bins[sorted_counts == 0] = sorted_bins[positive[-1]]  # never-seen items: the tail
    bin_of = np.empty(len(counts), dtype=np.int64)
    bin_of[order] = sorted_bins
    train = np.bincount(bin_of, weights=counts, minlength=bins) / total
    observed = np.bincount(bin_of[recent], minlength=bins) / len(recent)
    e = np.maximum(train, epsilon)
    o = np.maximum(observed, epsilon)
    psi = float(np.sum((o - e) * np.log(o / e)))
    return psi, [(float(a), float(b)) for a, b in zip(train, observed, strict=True)]


def _psi_signal(artifact: Artifact, event_items: list[str], t: Thresholds) -> Signal:
    index = artifact.item_index
    columns = [index[i] - 1 for i in event_items if i in index]
    psi, shares = population_stability(artifact.popularity, columns)
    n = len(columns)
    enough = n >= t.min_samples
    tripped = enough and psi is not None and psi > t.psi
    detail = f"PSI over {PSI_BINS} bins of equal training mass, {n:,} events on known items"
    if not enough:
        detail += f" (fewer than {t.min_samples:,}: cannot trip)"
    facts = {"bins": [{"train": round(a, 6), "recent": round(b, 6)} for a, b in shares]}
    return Signal("popularity_psi", psi, t.psi, tripped, n, detail, facts)


def _ctr_signal(
    engine: Engine,
    version: int,
    *,
    now: int,
    since: int,
    baseline_since: int,
    thresholds: Thresholds,
    click_events: Sequence[str],
    conversion_events: Sequence[str],
    k: int,
    attributed: pd.DataFrame | None,
) -> Signal:
    def clicks(start: int, end: int) -> tuple[int, int]:
        groups = online_metrics(
            engine,
            click_events=click_events,
            conversion_events=conversion_events,
            since_ms=start,
            until_ms=end,
            k=k,
            attributed=attributed,
        )
        mine = [g for g in groups if g.model_version == version and g.ctr.value is not None]
        hits = sum(round((g.ctr.value or 0.0) * g.ctr.n) for g in mine)
        return hits, sum(g.ctr.n for g in mine)

    base_hits, base_n = clicks(baseline_since, since)
    hits, n = clicks(since, now)
    diff = compare(f"ctr@{k}", base_hits, base_n, hits, n)
    t = thresholds
    enough = min(n, base_n) >= t.min_samples
    drop = None
    if diff.a is not None and diff.b is not None and diff.a > 0:
        drop = (diff.a - diff.b) / diff.a
    significant = (
        diff.diff is not None
        and diff.diff < 0
        and diff.p_value is not None
        and diff.p_value < t.ctr_alpha
    )
    tripped = enough and drop is not None and drop > t.ctr_drop and significant
    if diff.a is None or diff.b is None:
        detail = f"ctr@{k}: {n:,} impressions now, {base_n:,} in the baseline"
    else:
        detail = (
            f"ctr@{k} {diff.b:.4f} ({n:,} impressions) against {diff.a:.4f} "
            f"({base_n:,}) before; difference {diff.diff:+.4f} "
            f"[{diff.ci_low:+.4f}, {diff.ci_high:+.4f}], p={_p(diff.p_value)}"
        )
    if drop is not None and drop > t.ctr_drop and not significant:
        detail += f" (not significant at p < {t.ctr_alpha:g}: cannot trip)"
    if not enough:
        detail += f" (fewer than {t.min_samples:,} in a window: cannot trip)"
    facts = {k_: v for k_, v in diff.report().items() if k_ != "metric"}
    return Signal("ctr_drop", drop, t.ctr_drop, tripped, n, detail, facts)


def _p(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.3g}"


def _requests(engine: Engine, since: int, until: int) -> list[tuple[str, str | None]]:
    m = impressions_table.c
    stmt = (
        select(m.user_id, m.fallback)
        .where(m.endpoint == "recommend")
        .where(m.user_id.is_not(None))
        .where(m.shown_at >= since)
        .where(m.shown_at < until)
    )
    with engine.connect() as conn:
        return [(str(u), f) for u, f in conn.execute(stmt)]


def _events(engine: Engine, since: int, until: int) -> list[tuple[str, str]]:
    i = interactions_table.c
    stmt = (
        select(users_table.c.external_id, items_table.c.external_id)
        .join(users_table, users_table.c.id == i.user_id)
        .join(items_table, items_table.c.id == i.item_id)
        .where(i.occurred_at >= since)
        .where(i.occurred_at < until)
    )
    with engine.connect() as conn:
        return [(str(u), str(it)) for u, it in conn.execute(stmt)]
