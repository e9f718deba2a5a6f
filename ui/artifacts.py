"""The champion's verified artifact and catalogue, loaded once per version and revision.

What the explorer scores with when the service does not answer, and what the drift signals
read: the same :func:`recsys.registry.load_artifact` and :class:`recsys.catalogue.Catalogue`
the CLI's ``recommend`` uses (onnxruntime and numpy, never torch).
"""

from __future__ import annotations

import threading

from sqlalchemy import Engine

from recsys import registry
from recsys.artifacts import Artifact
from recsys.catalogue import Catalogue
from recsys.db import catalogue as catalogue_state


class ArtifactCache:
    """Loaded artifacts by version (a few: versions are immutable) and the catalogue of the
    latest one asked, read again when the store's catalogue revision moves."""

    def __init__(self, engine: Engine, keep: int = 3) -> None:
        self.engine = engine
        self.keep = keep
        self._artifacts: dict[int, Artifact] = {}
        self._catalogues: dict[int, Catalogue] = {}
        self._lock = threading.Lock()

    def champion(self) -> Artifact:
        """The champion's artifact; :class:`recsys.registry.RegistryError` without one."""
        version = registry.alias_version(self.engine, registry.CHAMPION)
        if version is None:
            raise registry.RegistryError("there is no champion model yet")
        return self.version(version)

    def version(self, version: int) -> Artifact:
        with self._lock:
            found = self._artifacts.get(version)
        if found is not None:
            return found
        artifact = registry.load_artifact(self.engine, version, threads=1)
        with self._lock:
            self._artifacts[version] = artifact
            while len(self._artifacts) > self.keep:
                oldest = min(self._artifacts)
                self._artifacts.pop(oldest)
                self._catalogues.pop(oldest, None)
        return artifact

    def catalogue(self, artifact: Artifact) -> Catalogue:
        """Titles, availability and filter masks aligned with ``artifact``'s items."""
        revision = catalogue_state.revision(self.engine)
        with self._lock:
            found = self._catalogues.get(artifact.version)
        if found is not None and found.revision == revision:
            return found
        loaded = Catalogue.load(self.engine, artifact.item_ids)
        with self._lock:
            self._catalogues[artifact.version] = loaded
        return loaded
