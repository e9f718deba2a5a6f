"""The model registry, one module per job.

- :mod:`recsys.registry.store`: versions and aliases (read, move, promote, roll back) and
  loading a version's verified artifact. Re-exported here: it is all the prediction service
  imports, and it loads neither torch, nor pandas, nor pyarrow.
- :mod:`recsys.registry.registration`: exporting a trained model and registering it.
- :mod:`recsys.registry.promotion`: the promotion gate (evaluates; imports the data stack).
- :mod:`recsys.registry.housekeeping`: clearing what crashed registrations left.

Import the last three explicitly (``from recsys.registry.promotion import gate``).
"""

from __future__ import annotations

from recsys.registry.store import (
    ALIASES,
    CHALLENGER,
    CHAMPION,
    DEFAULT_MARGIN,
    DEFAULT_METRIC,
    MODELS_FOLDER,
    SERVABLE,
    VISIBLE_STATUSES,
    AliasMove,
    ModelRecord,
    RegistryError,
    actor,
    alias_history,
    alias_version,
    aliases,
    champion_stack,
    code_version,
    get_version,
    list_versions,
    load_artifact,
    move_alias,
    promote,
    rollback,
    servable_versions,
)

__all__ = [
    "ALIASES",
    "CHALLENGER",
    "CHAMPION",
    "DEFAULT_MARGIN",
    "DEFAULT_METRIC",
    "MODELS_FOLDER",
    "SERVABLE",
    "VISIBLE_STATUSES",
    "AliasMove",
    "ModelRecord",
    "RegistryError",
    "actor",
    "alias_history",
    "alias_version",
    "aliases",
    "champion_stack",
    "code_version",
    "get_version",
    "list_versions",
    "load_artifact",
    "move_alias",
    "promote",
    "rollback",
    "servable_versions",
]
