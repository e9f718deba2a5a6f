"""Attribution: which impression an event is credited to. Events stay events: the result is
the ``attributions`` table, rebuilt for a time range from ``impressions``, ``interactions``
and ``event_recommendations`` whenever asked (so a changed window can be applied to the past).

An event is credited to the impression it named (its ``recommendation_id``) when that
impression showed its item; otherwise to the most recent impression that showed its item to
its user (or session) no more than ``window`` before it. An event no impression explains is
not attributed. ``rank`` is the item's position in that list (1 = first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, delete, insert, select

from recsys.db.schema import (
    attributions_table,
    event_recommendations_table,
    impressions_table,
    interactions_table,
    items_table,
    users_table,
)

_COLUMNS = ["interaction_id", "impression_id", "rank", "event_type", "occurred_at", "named"]


@dataclass(frozen=True)
class AttributionResult:
    events: int
    attributed: int
    named: int
    since_ms: int
    until_ms: int | None

    def report(self) -> dict[str, Any]:
        return dict(self.__dict__)


def attribute(
    engine: Engine, *, window_seconds: float, since_ms: int = 0, until_ms: int | None = None
) -> AttributionResult:
    """Rebuild the attributions of the events in [since, until) (until: no end)."""
    events, found = _attribution(engine, window_seconds, since_ms, until_ms)
    with engine.begin() as conn:
        t = attributions_table.c
        stmt = delete(attributions_table).where(t.occurred_at >= since_ms)
        if until_ms is not None:
            stmt = stmt.where(t.occurred_at < until_ms)
        conn.execute(stmt)
        rows: list[dict[str, Any]] = [
            {str(k): v for k, v in row.items()} for row in found[_COLUMNS].to_dict("records")
        ]
        for start in range(0, len(rows), 10_000):
            conn.execute(insert(attributions_table), rows[start : start + 10_000])
    return AttributionResult(
        events=len(events),
        attributed=len(found),
        named=int(found["named"].sum()) if len(found) else 0,
        since_ms=since_ms,
        until_ms=until_ms,
    )


def attributions(
    engine: Engine, *, window_seconds: float, since_ms: int = 0, until_ms: int | None = None
) -> pd.DataFrame:
    """What :func:`attribute` would store for the events in [since, until), read-only: the
    rows (interaction_id, impression_id, rank, event_type, occurred_at, named) as a frame.

    For readers that may not write (a dashboard): the online metrics, an experiment's status
    and the drift signals take it as ``attributed`` instead of reading the table.
    """
    return _attribution(engine, window_seconds, since_ms, until_ms)[1]


def _attribution(
    engine: Engine, window_seconds: float, since_ms: int, until_ms: int | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    window_ms = int(window_seconds * 1000)
    events = _events(engine, since_ms, until_ms)
    shown = _shown(engine, since_ms - window_ms, until_ms)
    return events, credit(events, shown, window_ms)


def credit(events: pd.DataFrame, shown: pd.DataFrame, window_ms: int) -> pd.DataFrame:
    """The attribution rows of ``events`` (interaction_id, who, item, event_type, occurred_at,
    recommendation_id) given the exploded impressions ``shown`` (impression_id, who, item,
    rank, shown_at)."""
    if events.empty or shown.empty:
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in _COLUMNS})
    by_name = events.dropna(subset=["recommendation_id"]).merge(
        shown,
        left_on=["recommendation_id", "item"],
        right_on=["impression_id", "item"],
        suffixes=("", "_shown"),
    )
    by_name = by_name.assign(named=True)
    rest = events[~events["interaction_id"].isin(by_name["interaction_id"])]
    left = rest.sort_values("occurred_at", kind="stable")
    right = shown.sort_values("shown_at", kind="stable")
    matched = pd.merge_asof(
        left,
        right,
        left_on="occurred_at",
        right_on="shown_at",
        by=["who", "item"],
        direction="backward",
        tolerance=window_ms,
        allow_exact_matches=True,
    )
    matched = matched.dropna(subset=["impression_id"]).assign(named=False)
    out = pd.concat([by_name, matched], ignore_index=True)
    out["rank"] = out["rank"].astype(np.int64)
    return out[_COLUMNS]


def _events(engine: Engine, since_ms: int, until_ms: int | None) -> pd.DataFrame:
    i = interactions_table.c
    stmt = (
        select(
            i.id.label("interaction_id"),
            users_table.c.external_id.label("who"),
            items_table.c.external_id.label("item"),
            i.event_type,
            i.occurred_at,
            event_recommendations_table.c.recommendation_id,
        )
        .join(users_table, users_table.c.id == i.user_id)
        .join(items_table, items_table.c.id == i.item_id)
        .outerjoin(
            event_recommendations_table,
            event_recommendations_table.c.interaction_id == i.id,
        )
        .where(i.occurred_at >= since_ms)
    )
    if until_ms is not None:
        stmt = stmt.where(i.occurred_at < until_ms)
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    frame = pd.DataFrame(
        rows,
        columns=["interaction_id", "who", "item", "event_type", "occurred_at", "recommendation_id"],
        dtype=object,
    )
    return frame.astype({"interaction_id": np.int64, "occurred_at": np.int64})


def _shown(engine: Engine, since_ms: int, until_ms: int | None) -> pd.DataFrame:
    """Impressions shown to someone, one row per shown item with its rank."""
    m = impressions_table.c
    stmt = select(m.id, m.user_id, m.session_id, m.shown_at, m["items"]).where(
        m.shown_at >= since_ms
    )
    if until_ms is not None:
        stmt = stmt.where(m.shown_at < until_ms)
    ids: list[str] = []
    who: list[str] = []
    items: list[str] = []
    ranks: list[int] = []
    times: list[int] = []
    with engine.connect() as conn:
        for rid, user, session, at, shown in conn.execute(stmt):
            person = user if user is not None else session
            if person is None or not shown:
                continue
            count = len(shown)
            ids.extend([rid] * count)
            who.extend([person] * count)
            items.extend(shown)
            ranks.extend(range(1, count + 1))
            times.extend([at] * count)
    return pd.DataFrame(
        {
            "impression_id": pd.Series(ids, dtype=object),
            "who": pd.Series(who, dtype=object),
            "item": pd.Series(items, dtype=object),
            "rank": np.asarray(ranks, dtype=np.int64),
            "shown_at": np.asarray(times, dtype=np.int64),
        }
    )
