"""What a ranking knows of the items beyond the model: titles, availability and the soft
filters' attribute masks, aligned with a model's item columns and read from the store.

Used by everything that ranks (the prediction service, the batch, ``recsys recommend``);
:class:`recsys.ranking.Filters` says what the filters are. ``revision`` is the catalogue's
revision when it was read (:mod:`recsys.db.catalogue`), so a reader can tell when to read it
again. Needs numpy and SQLAlchemy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine, select

from recsys.db import catalogue as state
from recsys.db.schema import items_table
from recsys.ranking import Filters

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass
class Catalogue:
    """Item attributes aligned with an artifact's item columns (column j = index j + 1).

    ``unavailable`` holds the columns of items that must never be recommended (marked
    unavailable in the store); every ranking excludes them, whatever the filters.
    """

    titles: list[str | None]
    genres: dict[str, npt.NDArray[np.bool_]]
    year: FloatArray
    price: FloatArray
    attributes: list[dict[str, Any]]
    unavailable: IntArray
    revision: int = 0

    @classmethod
    def load(cls, engine: Engine, item_ids: list[str]) -> Catalogue:
        # The revision first: a change made while the rows are read shows as a newer one.
        revision = state.revision(engine)
        position = {item_id: j for j, item_id in enumerate(item_ids)}
        count = len(item_ids)
        titles: list[str | None] = [None] * count
        genre_rows: dict[str, list[int]] = {}
        year = np.full(count, np.nan, dtype=np.float32)
        price = np.full(count, np.nan, dtype=np.float32)
        attributes: list[dict[str, Any]] = [{} for _ in range(count)]
        unavailable: list[int] = []
        c = items_table.c
        with engine.connect() as conn:
            rows = conn.execute(
                select(c.external_id, c.title, c.genres, c.year, c.price, c.available, c.attributes)
            )
            for external_id, title, genres, yr, pr, available, attrs in rows:
                j = position.get(external_id)
                if j is None:
                    continue
                titles[j] = title
                if not available:
                    unavailable.append(j)
                for genre in genres or []:
                    genre_rows.setdefault(str(genre), []).append(j)
                if yr is not None:
                    year[j] = yr
                if pr is not None:
                    price[j] = pr
                if isinstance(attrs, dict):
                    attributes[j] = attrs
        masks = {}
        for genre, rows_of in genre_rows.items():
            mask = np.zeros(count, dtype=bool)
            mask[rows_of] = True
            masks[genre] = mask
        return cls(
            titles,
            masks,
            year,
            price,
            attributes,
            np.asarray(sorted(unavailable), dtype=np.int64),
            revision,
        )

    def mask(self, filters: Filters) -> tuple[npt.NDArray[np.bool_] | None, list[str]]:
        """Items passing the soft filters, (I,) (None when there are none), and warnings.

        A genre or attribute no item has matches nothing; the warning says so, and the
        backfill still fills the list.
        """
        if not filters.soft:
            return None, []
        count = len(self.titles)
        keep = np.ones(count, dtype=bool)
        warnings: list[str] = []
        if filters.include_genres:
            wanted = np.zeros(count, dtype=bool)
            for genre in filters.include_genres:
                wanted |= self._genre(genre, "filters.include_genres", warnings)
            keep &= wanted
        for genre in filters.exclude_genres:
            keep &= ~self._genre(genre, "filters.exclude_genres", warnings)
        bounds = [
            (self.year, filters.min_year, filters.max_year),
            (self.price, filters.min_price, filters.max_price),
        ]
        for values, low, high in bounds:
            with np.errstate(invalid="ignore"):
                if low is not None:
                    keep &= values >= low
                if high is not None:
                    keep &= values <= high
        for key, wanted_value in filters.attributes.items():
            present = [j for j, attrs in enumerate(self.attributes) if key in attrs]
            if not present:
                warnings.append(f"filters.attributes.{key}: no item has this attribute")
            matches = np.zeros(count, dtype=bool)
            matches[[j for j in present if self.attributes[j][key] == wanted_value]] = True
            keep &= matches
        return keep, warnings

    def _genre(self, genre: str, field_name: str, warnings: list[str]) -> npt.NDArray[np.bool_]:
        if genre not in self.genres:
            known = ", ".join(sorted(self.genres)[:20]) or "none"
            warnings.append(f"{field_name}: unknown genre {genre!r}; genres include: {known}")
            return np.zeros(len(self.titles), dtype=bool)
        return self.genres[genre]
