"""The catalogue's revision and availability: what tells readers the items changed.

Every write that changes how items are described or whether they may be recommended moves
the one counter in ``catalogue_state`` inside its own transaction (the row lock orders
concurrent writers), so a reader that saw revision ``r`` and now sees another one knows to
read the catalogue again, and one that sees ``r`` knows it need not.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, select, update

from recsys.db.schema import catalogue_state_table as state
from recsys.db.schema import items_table as items

_CHUNK = 10_000


def bump(conn: Connection) -> None:
    """Move the revision inside the caller's transaction (call it after the change)."""
    conn.execute(
        update(state)
        .where(state.c.id == 1)
        .values(revision=state.c.revision + 1, updated_at=datetime.now(UTC))
    )


def revision(engine: Engine) -> int:
    """The current revision (0 when nothing was written since the table was made)."""
    with engine.connect() as conn:
        found = conn.execute(select(state.c.revision).where(state.c.id == 1)).scalar()
    return int(found or 0)


def unavailable_items(engine: Engine) -> set[str]:
    """External ids of the items that must not be recommended."""
    with engine.connect() as conn:
        rows = conn.execute(select(items.c.external_id).where(items.c.available.is_(False)))
        return {row[0] for row in rows}


def withdraw_absent(conn: Connection, source: str, present: Iterable[str]) -> list[str]:
    """Mark unavailable the items ``source`` described before that are not in ``present``
    (a complete read of the source); returns their external ids, sorted."""
    seen = set(present)
    stored = conn.execute(
        select(items.c.external_id).where(items.c.source == source, items.c.available.is_(True))
    ).scalars()
    gone = sorted(i for i in stored if i not in seen)
    for start in range(0, len(gone), _CHUNK):
        conn.execute(
            update(items)
            .where(items.c.external_id.in_(gone[start : start + _CHUNK]))
            .values(available=False)
        )
    if gone:
        bump(conn)
    return gone
