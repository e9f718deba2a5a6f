"""Who may change state from the dashboard: the holder of an API key with the ``admin`` scope
(``recsys keys create NAME --scope admin``) or of ``RECSYS_ADMIN_TOKEN``, as for the service's
admin endpoints. The key comes with each action's form and is never kept, logged or shown;
the key's name (never the key) goes into the recorded actor.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from sqlalchemy import Engine, select

from recsys import registry
from recsys.db.schema import api_keys_table
from recsys.keys import ADMIN, KeyRing, grants


@dataclass(frozen=True)
class Refused(Exception):
    """No admin credential: ``status`` 401 (none, or not a valid key) or 403 (a key without
    the admin scope)."""

    status: int
    message: str


class Admins:
    def __init__(self, engine: Engine, admin_token: str | None) -> None:
        self.engine = engine
        self._ring = KeyRing(engine, static={admin_token: (ADMIN,)} if admin_token else None)
        self._token = admin_token

    def actor(self, key: str | None, via: str) -> str:
        """The recorded actor of an action ``via`` the dashboard, if ``key`` may administer;
        else :class:`Refused`."""
        key = (key or "").strip()
        if not key:
            raise Refused(
                401, "this action needs an admin key: recsys keys create NAME --scope admin"
            )
        scopes = self._ring.scopes(key)
        if scopes is None:
            raise Refused(401, "that key is not valid (unknown, mistyped or revoked)")
        if not grants(scopes, ADMIN):
            raise Refused(403, f"that key's scopes ({', '.join(scopes)}) do not include admin")
        if self._token is not None and hmac.compare_digest(key, self._token):
            return registry.actor(f"{via}, admin token")
        return registry.actor(f"{via}, key {self._name(key)!r}")

    def _name(self, key: str) -> str:
        parts = key.split("_")
        prefix = parts[1] if len(parts) >= 3 else ""
        c = api_keys_table.c
        with self.engine.connect() as conn:
            name = conn.execute(select(c.name).where(c.prefix == prefix)).scalar()
        return str(name or prefix)
