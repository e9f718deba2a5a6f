"""A champion on synthetic data, and recent traffic written as the service and clients would."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine

from recsys import registry
from recsys.artifacts import Artifact
from recsys.data.ingest import ingest
from recsys.data.synthetic import SyntheticConfig, generate
from recsys.db.events import Event, record_events
from recsys.experiment import train_and_evaluate
from recsys.online.impressions import Impression, write_impressions
from recsys.registry import registration

HOUR_MS = 3_600_000
NOW_MS = 1_900_000_000_000  # 2030, well after the synthetic events of 2024


@dataclass
class Champion:
    engine: Engine
    version: int
    artifact: Artifact

    def popularity(self) -> np.ndarray:
        counts = self.artifact.popularity.astype(np.float64)
        return counts / counts.sum()


def promote_champion(engine: Engine, home: Path, name: str = "pop") -> int:
    """Synthetic events, one model of ``name`` trained on them, registered and promoted."""
    batch = generate(SyntheticConfig(num_users=150, num_items=60, num_interactions=4000, seed=5))
    ingest(engine, batch, home / "rejects")
    outcome = train_and_evaluate(
        engine, name, "loo", train_overrides={"max_epochs": 2, "threads": 1, "progress": False}
    )
    version = registration.register(engine, outcome, artifacts_dir=home / "artifacts").version
    registry.promote(engine, version, actor="tests", reason="drift fixture")
    return version


@pytest.fixture
def champion(engine: Engine, tmp_path: Path) -> Champion:
    version = promote_champion(engine, tmp_path)
    return Champion(engine, version, registry.load_artifact(engine, version))


def traffic(
    champion: Champion,
    *,
    start_ms: int,
    end_ms: int,
    lists: int,
    ctr: float,
    users: Sequence[str] | None = None,
    item_p: np.ndarray | None = None,
    items: Sequence[str] | None = None,
    background: int = 0,
    seed: int = 0,
    tag: str = "",
) -> None:
    """``lists`` recommend impressions in [start, end) for ``users`` (default: the champion's),
    a click on the first item of a ``ctr`` share of them a second later, and ``background``
    other events; items are drawn from ``item_p`` over ``items`` (default: the training
    popularity over the champion's items)."""
    rng = np.random.default_rng(seed)
    people = list(users) if users is not None else champion.artifact.user_ids
    catalogue = list(items) if items is not None else champion.artifact.item_ids
    p = item_p if item_p is not None else champion.popularity()
    shown: list[Impression] = []
    events: list[Event] = []
    times = np.sort(rng.integers(start_ms, end_ms - 2_000, size=lists + background))
    for n in range(lists):
        user = people[int(rng.integers(len(people)))]
        picked = rng.choice(len(catalogue), size=min(10, len(catalogue)), replace=False, p=p)
        at = int(times[n])
        rid = f"{tag}{n:x}".rjust(32, "0")[-32:]
        shown.append(
            Impression(rid, "recommend", champion.version, tuple(catalogue[i] for i in picked),
                       user_id=user, shown_at=at)
        )  # fmt: skip
        if rng.random() < ctr:
            events.append(Event(user, catalogue[picked[0]], "click", occurred_at_ms=at + 1_000))
    for n in range(background):
        user = people[int(rng.integers(len(people)))]
        item = catalogue[int(rng.choice(len(catalogue), p=p))]
        events.append(Event(user, item, "interaction", occurred_at_ms=int(times[lists + n]) + n))
    write_impressions(champion.engine, shown)
    for start in range(0, len(events), 500):
        record_events(champion.engine, events[start : start + 500])
