"""Impressions: the lists the prediction API answered, written in batches.

A response's ``recommendation_id`` is the impression's id; :func:`write_impressions` stores a
batch of them in one statement (the service's log calls it off the request path).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from sqlalchemy import Engine, insert

from recsys.db.schema import impressions_table

ENDPOINTS = ("recommend", "recommend_session", "similar_items")


def new_recommendation_id() -> str:
    """A fresh id for one response (32 hex characters, unguessable)."""
    return uuid.uuid4().hex


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Impression:
    """One answered list. Exactly one of ``user_id``, ``session_id`` and ``item_id`` says
    whom or what it was for, by endpoint; ``items`` are external ids, best first."""

    id: str
    endpoint: str
    model_version: int
    items: tuple[str, ...]
    user_id: str | None = None
    session_id: str | None = None
    item_id: str | None = None
    experiment_id: int | None = None
    arm: str | None = None
    fallback: str | None = None
    shown_at: int = field(default_factory=now_ms)

    def row(self) -> dict[str, object]:
        out = asdict(self)
        out["items"] = list(self.items)
        return out


def write_impressions(engine: Engine, impressions: Sequence[Impression]) -> int:
    """Store a batch in one transaction; returns how many were written."""
    if not impressions:
        return 0
    with engine.begin() as conn:
        conn.execute(insert(impressions_table), [i.row() for i in impressions])
    return len(impressions)
