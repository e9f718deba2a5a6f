"""The canonical in-memory form every importer produces and the loader writes.

An import yields an :class:`ImportBatch`: three pandas frames with fixed columns plus the
rows that were rejected on the way. External ids are strings; ``occurred_at`` is Unix epoch
milliseconds in UTC (int64), the unit the database stores.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

INTERACTION_COLUMNS = ("user_id", "item_id", "event_type", "value", "occurred_at")
ITEM_COLUMNS = ("item_id", "title", "genres", "year", "price", "attributes")
# Items may also carry these (a database source gives both); absent, the store keeps its own.
ITEM_OPTIONAL_COLUMNS = ("available", "source")
USER_COLUMNS = ("user_id", "age", "gender", "occupation", "zip_code", "attributes")

DEFAULT_EVENT_TYPE = "interaction"


def empty_interactions() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": pd.Series([], dtype=object),
            "item_id": pd.Series([], dtype=object),
            "event_type": pd.Series([], dtype=object),
            "value": pd.Series([], dtype="float64"),
            "occurred_at": pd.Series([], dtype="int64"),
        }
    )


def empty_items() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=object) for c in ITEM_COLUMNS})


def empty_users() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=object) for c in USER_COLUMNS})


@dataclass(frozen=True)
class Reject:
    """One input row that was not loaded, with where it came from and why."""

    file: str
    line: int
    reason: str
    raw: str


@dataclass
class ImportBatch:
    """What one import produced: rows to load and rows rejected (never silently dropped).

    ``items``/``users`` carry attributes for the catalogue and may hold ids that never appear
    in ``interactions``; ids that appear only in ``interactions`` are created bare.

    ``rows_read`` counts the records of the event file, each either loaded as interactions or
    in ``rejects``: ``rows_read == len(interactions) + len(rejects)`` (a sequence line that is
    kept counts as its events). Rows of item and user files that could not be used are in
    ``catalogue_rejects``, outside that sum.
    """

    kind: str
    source: str
    interactions: pd.DataFrame = field(default_factory=empty_interactions)
    items: pd.DataFrame = field(default_factory=empty_items)
    users: pd.DataFrame = field(default_factory=empty_users)
    rejects: list[Reject] = field(default_factory=list)
    rows_read: int = 0
    catalogue_rejects: list[Reject] = field(default_factory=list)

    @property
    def rejects_by_reason(self) -> dict[str, int]:
        return _by_reason(self.rejects)

    @property
    def catalogue_rejects_by_reason(self) -> dict[str, int]:
        return _by_reason(self.catalogue_rejects)

    @property
    def all_rejects(self) -> list[Reject]:
        """Every rejected row, of the event file and of the catalogue files."""
        return self.rejects + self.catalogue_rejects


def _by_reason(rejects: list[Reject]) -> dict[str, int]:
    return dict(sorted(Counter(r.reason for r in rejects).items()))


def write_csv(batch: ImportBatch, folder: Path) -> dict[str, Path]:
    """Write a batch as the CSV files ``recsys import csv`` reads back (with --items/--users).

    Genres are joined with ``|``; attribute dicts become one column per key.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / f"{name}.csv" for name in ("interactions", "items", "users")}
    batch.interactions.to_csv(paths["interactions"], index=False)
    for name, frame in (("items", batch.items), ("users", batch.users)):
        flat = frame.drop(columns="attributes")
        if "genres" in flat.columns:
            flat["genres"] = [
                "|".join(g) if isinstance(g, list | tuple) else "" for g in frame["genres"]
            ]
        extra = pd.DataFrame([a if isinstance(a, dict) else {} for a in frame["attributes"]])
        pd.concat([flat.reset_index(drop=True), extra], axis=1).to_csv(paths[name], index=False)
    return paths
