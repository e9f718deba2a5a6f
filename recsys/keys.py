"""API keys of the prediction API: scoped, stored as hashes, checked in constant time.

A key reads ``rsk_<prefix>_<secret>``. Only the prefix (to find the row) and the SHA-256 of
the whole key are stored; the key itself is shown once, when it is made. Keys are 192-bit
random tokens, so a fast hash is the right one (a slow password hash buys nothing here).
Scopes: ``read`` (recommendations, scores, model info), ``events`` (record interactions)
and ``admin`` (reloads; it includes the other two).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from recsys.db.schema import api_keys_table
from recsys.errors import RecsysError

logger = logging.getLogger(__name__)

READ = "read"
EVENTS = "events"
ADMIN = "admin"
SCOPES = (READ, EVENTS, ADMIN)
KEY_PREFIX = "rsk"


class ApiKeyError(RecsysError):
    """A key that cannot be made or found (duplicate name, unknown scope, unknown key)."""


@dataclass(frozen=True)
class ApiKey:
    name: str
    prefix: str
    scopes: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None

    def allows(self, scope: str) -> bool:
        return self.revoked_at is None and grants(self.scopes, scope)


def parse_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Scopes from ``read,events`` style values, validated and in canonical order."""
    wanted = {s.strip() for value in scopes for s in value.split(",") if s.strip()}
    unknown = wanted - set(SCOPES)
    if unknown:
        raise ApiKeyError(f"unknown scope {sorted(unknown)[0]!r}: use {', '.join(SCOPES)}")
    if not wanted:
        raise ApiKeyError(f"give at least one scope: {', '.join(SCOPES)}")
    return tuple(s for s in SCOPES if s in wanted)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(engine: Engine, name: str, scopes: Iterable[str]) -> tuple[str, ApiKey]:
    """Make a key; returns the key (shown once, never stored) and its record."""
    allowed = parse_scopes(scopes)
    if not name or len(name) > 64:
        raise ApiKeyError("a key needs a name of 1-64 characters")
    prefix = secrets.token_hex(4)
    key = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(24)}"
    now = datetime.now(UTC)
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(api_keys_table).values(
                    name=name,
                    prefix=prefix,
                    secret_sha256=_digest(key),
                    scopes=",".join(allowed),
                    created_at=now,
                    revoked_at=None,
                )
            )
    except IntegrityError:
        raise ApiKeyError(f"a key named {name!r} already exists") from None
    return key, ApiKey(name, prefix, allowed, now, None)


def list_keys(engine: Engine) -> list[ApiKey]:
    c = api_keys_table.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(c.name, c.prefix, c.scopes, c.created_at, c.revoked_at).order_by(c.id)
        ).all()
    return [
        ApiKey(r.name, r.prefix, tuple(r.scopes.split(",")), r.created_at, r.revoked_at)
        for r in rows
    ]


def revoke_key(engine: Engine, name_or_prefix: str) -> ApiKey:
    """Revoke a key by name or prefix; a revoked key is kept (listed) but never accepted."""
    c = api_keys_table.c
    with engine.begin() as conn:
        done = conn.execute(
            update(api_keys_table)
            .where((c.name == name_or_prefix) | (c.prefix == name_or_prefix))
            .where(c.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))
        )
    if done.rowcount == 0:
        raise ApiKeyError(f"no active key named {name_or_prefix!r}")
    return next(k for k in list_keys(engine) if name_or_prefix in (k.name, k.prefix))


def _prefix_of(key: str) -> str | None:
    parts = key.split("_")
    if len(parts) < 3 or parts[0] != KEY_PREFIX:
        return None
    return parts[1]


class KeyRing:
    """Checks presented keys against the database, with a short-lived cache of the rows.

    The table is read on first use and then re-read in a background thread once the copy is
    older than ``refresh_seconds`` (so a revocation takes effect within about that time, and
    a request never waits on the refresh); a prefix not in the cache is looked up by itself
    (one indexed query), so a key works the moment it is made. ``static`` maps extra keys
    (say, a token from the environment) to their scopes.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        refresh_seconds: float = 5.0,
        static: dict[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.engine = engine
        self.refresh_seconds = refresh_seconds
        self._static = {_digest(k): scopes for k, scopes in (static or {}).items() if k}
        self._rows: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._read_at: float | None = None
        self._refreshing = False
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        c = api_keys_table.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(c.prefix, c.secret_sha256, c.scopes).where(c.revoked_at.is_(None))
            ).all()
        fresh = {r.prefix: (r.secret_sha256, tuple(r.scopes.split(","))) for r in rows}
        with self._lock:
            self._rows, self._read_at = fresh, time.monotonic()

    def _refresh_in_background(self) -> None:
        try:
            self._refresh()
        except Exception:  # the database may be briefly away: keep the last copy
            logger.warning("could not re-read the API keys; keeping the last copy", exc_info=True)
        finally:
            self._refreshing = False

    def _keep_fresh(self) -> None:
        if self._read_at is None:
            self._refresh()
            return
        if time.monotonic() - self._read_at >= self.refresh_seconds and not self._refreshing:
            with self._lock:
                if self._refreshing:
                    return
                self._refreshing = True
            threading.Thread(
                target=self._refresh_in_background, name="api-keys-refresh", daemon=True
            ).start()

    def _lookup(self, prefix: str) -> tuple[str, tuple[str, ...]] | None:
        c = api_keys_table.c
        with self.engine.connect() as conn:
            row = conn.execute(
                select(c.secret_sha256, c.scopes)
                .where(c.prefix == prefix)
                .where(c.revoked_at.is_(None))
            ).first()
        if row is None:
            return None
        found = (str(row.secret_sha256), tuple(str(row.scopes).split(",")))
        with self._lock:
            self._rows = {**self._rows, prefix: found}
        return found

    def scopes(self, key: str) -> tuple[str, ...] | None:
        """The scopes ``key`` grants, or None when it is not a valid, unrevoked key."""
        digest = _digest(key)
        for stored, scopes in self._static.items():
            if hmac.compare_digest(stored, digest):
                return scopes
        prefix = _prefix_of(key)
        if prefix is None:
            return None
        self._keep_fresh()
        row = self._rows.get(prefix) or self._lookup(prefix)
        if row is None or not hmac.compare_digest(row[0], digest):
            return None
        return row[1]


def grants(scopes: tuple[str, ...], scope: str) -> bool:
    return scope in scopes or ADMIN in scopes
