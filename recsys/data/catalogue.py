"""The catalogue of a snapshot's users and items, read from the store.

The database side of side features: :mod:`recsys.data.features` turns it into matrices and
stays free of ``recsys.db``, so models (which import ``SideInfo`` from it) never load it.
"""

from __future__ import annotations

from sqlalchemy import Engine

from recsys.data.extract import IdMap
from recsys.data.features import Catalogue
from recsys.db.queries import catalogue_attributes


def load_catalogue(engine: Engine, users: IdMap, items: IdMap) -> Catalogue:
    """The catalogue of the users and items of a snapshot's id maps."""
    return Catalogue.from_attributes(catalogue_attributes(engine, users, items))
