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

from typing import TYPE_CHECKING, Any

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
]

# Transitional: `recsys.cli` still calls these through `registry.`; they load on first use
# (so importing this package stays light). Remove once the CLI imports them from their
# modules.
_MOVED = {
    "register": "recsys.registry.registration",
    "gate": "recsys.registry.promotion",
    "evaluate_artifact": "recsys.registry.promotion",
    "sweep": "recsys.registry.housekeeping",
}

if TYPE_CHECKING:
    from recsys.registry.housekeeping import sweep as sweep
    from recsys.registry.promotion import evaluate_artifact as evaluate_artifact
    from recsys.registry.promotion import gate as gate
    from recsys.registry.registration import register as register
else:

    def __getattr__(name: str) -> Any:
        if name in _MOVED:
            import importlib

            return getattr(importlib.import_module(_MOVED[name]), name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
