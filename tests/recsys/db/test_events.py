"""Online events and per-user history on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import Engine

from recsys.db.events import Event, record_events
from recsys.db.queries import user_histories, user_history
from recsys.db.schema import users_table


def test_record_events_creates_ids_skips_repeats_and_shows_in_history(engine: Engine) -> None:
    first = record_events(
        engine,
        [
            Event("alice", "book", "view", occurred_at_ms=1_000),
            Event("alice", "lamp", "purchase", value=19.5, occurred_at_ms=2_000),
            Event("bob", "book", occurred_at_ms=1_500),
        ],
    )
    assert (first.inserted, first.duplicates, first.new_users, first.new_items) == (3, 0, 2, 2)

    again = record_events(
        engine,
        [
            Event("alice", "lamp", "purchase", value=19.5, occurred_at_ms=2_000),
            Event("alice", "pen"),
        ],
    )
    assert (again.inserted, again.duplicates, again.new_users, again.new_items) == (1, 1, 0, 1)

    assert user_history(engine, "alice") == ["book", "lamp", "pen"]  # time order; "pen" is now
    assert user_history(engine, "bob") == ["book"]
    assert user_history(engine, "carol") is None

    # Many users in one query: absent users are left out, a user without events is empty.
    with engine.begin() as conn:
        conn.execute(users_table.insert().values(external_id="dave"))
    assert user_histories(engine, ["bob", "carol", "alice", "dave", "bob"]) == {
        "alice": ["book", "lamp", "pen"],
        "bob": ["book"],
        "dave": [],
    }
    assert user_history(engine, "dave") == []
    assert user_histories(engine, []) == {}
