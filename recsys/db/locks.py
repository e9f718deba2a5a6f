"""Named locks in the database: one holder at a time, across processes and machines.

A lock expires after its time to live, so a holder that died does not block forever; one
that is known to have died sooner (a flow run its orchestrator marked crashed) can be freed
by whoever knows it: :func:`holder` names the current holder and :func:`release` frees the
lock only if that holder still has it.
:func:`held` nests: inside a ``held`` block, another ``held`` of the same lock on the same
database (in the same thread or a context copied from it) is already its holder and does
nothing, so an entry point can take a lock before it starts the code that takes it again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from recsys.db.schema import locks_table
from recsys.errors import RecsysError


class LockHeldError(RecsysError):
    """Someone else holds the lock."""


# The locks the current context holds through held(): (database URL, lock name) pairs.
_HELD: ContextVar[frozenset[tuple[str, str]]] = ContextVar("recsys_locks_held", default=frozenset())


def acquire(engine: Engine, name: str, *, holder: str, ttl: timedelta) -> None:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            delete(locks_table)
            .where(locks_table.c.name == name)
            .where(locks_table.c.expires_at < now)
        )
        try:
            with conn.begin_nested():
                conn.execute(
                    insert(locks_table).values(
                        name=name, holder=holder, acquired_at=now, expires_at=now + ttl
                    )
                )
        except IntegrityError:
            row = conn.execute(select(locks_table).where(locks_table.c.name == name)).first()
            who = f"{row.holder} since {row.acquired_at:%Y-%m-%d %H:%M:%S} UTC" if row else "?"
            raise LockHeldError(f"{name} is already running: held by {who}") from None


def renew(engine: Engine, name: str, *, holder: str, ttl: timedelta) -> None:
    """Move the expiry of ``holder``'s lock to ``ttl`` from now, so a long job keeps it.

    A lock that ran out and was taken by another holder (or released) is lost: LockHeldError.
    """
    with engine.begin() as conn:
        renewed = conn.execute(
            update(locks_table)
            .where(locks_table.c.name == name)
            .where(locks_table.c.holder == holder)
            .values(expires_at=datetime.now(UTC) + ttl)
        ).rowcount
    if not renewed:
        raise LockHeldError(f"{name}: {holder} no longer holds the lock (it expired)")


def release(engine: Engine, name: str, *, holder: str) -> bool:
    """Free ``name`` if ``holder`` has it (expired or not); True if it did."""
    with engine.begin() as conn:
        freed = conn.execute(
            delete(locks_table)
            .where(locks_table.c.name == name)
            .where(locks_table.c.holder == holder)
        ).rowcount
    return bool(freed)


def holder(engine: Engine, name: str) -> str | None:
    """Who holds ``name`` now (None: nobody, or a holder whose lock has expired)."""
    with engine.connect() as conn:
        row = conn.execute(
            select(locks_table.c.holder)
            .where(locks_table.c.name == name)
            .where(locks_table.c.expires_at >= datetime.now(UTC))
        ).first()
    return None if row is None else str(row.holder)


@contextmanager
def held(engine: Engine, name: str, *, holder: str, ttl: timedelta) -> Iterator[None]:
    """Hold ``name`` for the duration of the block, or raise LockHeldError at once.

    Within an outer ``held`` of the same lock and database this is a no-op: the outer block
    holds the lock (under its holder name) and releases it.
    """
    key = (engine.url.render_as_string(hide_password=True), name)
    held_here = _HELD.get()
    if key in held_here:
        yield
        return
    acquire(engine, name, holder=holder, ttl=ttl)
    token = _HELD.set(held_here | {key})
    try:
        yield
    finally:
        _HELD.reset(token)
        release(engine, name, holder=holder)
