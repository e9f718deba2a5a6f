"""Named locks in the database: one holder at a time, across processes and machines.

A lock expires after its time to live, so a holder that died does not block forever.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, delete, insert, select
from sqlalchemy.exc import IntegrityError

from recsys.db.schema import locks_table
from recsys.errors import RecsysError


class LockHeldError(RecsysError):
    """Someone else holds the lock."""


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


def release(engine: Engine, name: str, *, holder: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            delete(locks_table)
            .where(locks_table.c.name == name)
            .where(locks_table.c.holder == holder)
        )


@contextmanager
def held(engine: Engine, name: str, *, holder: str, ttl: timedelta) -> Iterator[None]:
    """Hold ``name`` for the duration of the block, or raise LockHeldError at once."""
    acquire(engine, name, holder=holder, ttl=ttl)
    try:
        yield
    finally:
        release(engine, name, holder=holder)
