"""The impression log: batched writes off the request path, drops counted when full, retries
when the database is away, nothing flushed lost; and every list the scorer answers has an id."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import sqlalchemy as sa

from recsys.online.impressions import Impression, write_impressions
from serving.impressions import ImpressionLog
from serving.scorer import Scorer

sys.path.insert(0, str(Path(__file__).parent))
from conftest import Home


def _impression(n: int) -> Impression:
    return Impression(f"{n:032x}", "recommend", 1, ("a", "b"), 1_000 + n, user_id=f"u{n}")


class Recorder:
    def __init__(self, fail: int = 0, gate: threading.Event | None = None) -> None:
        self.batches: list[int] = []
        self.fail = fail
        self.gate = gate

    def __call__(self, engine: sa.Engine, impressions: Sequence[Impression]) -> int:
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail:
            self.fail -= 1
            raise sa.exc.OperationalError("INSERT", {}, Exception("database is away"))
        self.batches.append(len(impressions))
        return len(impressions)


def test_the_log_writes_in_batches_and_close_flushes_the_rest() -> None:
    written = Recorder()
    log = ImpressionLog(sa.create_engine("sqlite://"), batch=4, interval=60, write=written)
    for n in range(10):
        assert log.log(_impression(n))
    deadline = time.monotonic() + 5
    while sum(written.batches) < 8 and time.monotonic() < deadline:  # two full batches woke it
        time.sleep(0.01)
    assert written.batches[:2] == [4, 4]
    log.close()
    assert sum(written.batches) == 10 and log.pending == 0 and log.dropped == 0


def test_a_full_buffer_drops_and_counts_without_waiting() -> None:
    gate = threading.Event()
    written = Recorder(gate=gate)  # the writer is stuck: nothing leaves the buffer
    drops: list[int] = []
    log = ImpressionLog(
        sa.create_engine("sqlite://"), capacity=5, batch=100, interval=0.01, write=written,
        on_drop=drops.append,
    )  # fmt: skip
    time.sleep(0.05)
    started = time.perf_counter()
    accepted = [log.log(_impression(n)) for n in range(20)]
    assert time.perf_counter() - started < 0.05  # never waits for the database
    assert sum(accepted) <= 5 + 1 and log.dropped == 20 - sum(accepted) == sum(drops)
    gate.set()
    log.close()
    assert sum(written.batches) == sum(accepted)


def test_a_failed_write_is_retried_and_loses_nothing() -> None:
    written = Recorder(fail=2)
    log = ImpressionLog(sa.create_engine("sqlite://"), batch=3, interval=0.01, write=written)
    for n in range(7):
        log.log(_impression(n))
    deadline = time.monotonic() + 10
    while sum(written.batches) < 7 and time.monotonic() < deadline:
        time.sleep(0.02)
    log.close()
    assert sum(written.batches) == 7 and log.failures == 2 and log.dropped == 0


def test_every_answered_list_has_an_id_and_is_logged(home: Home) -> None:
    log = ImpressionLog(home.engine, interval=60)
    scorer = Scorer(home.engine, impressions=log)
    scorer.reload()
    user = scorer.recommend("u5", k=5)
    session = scorer.recommend_session(["i1", "i2"], k=3, session_id="visit-1")
    similar = scorer.similar_items("i3", k=4, user_id="u5")
    ids = [user.recommendation_id, session.recommendation_id, similar.recommendation_id]
    assert all(i is not None and len(i) == 32 for i in ids) and len(set(ids)) == 3
    assert log.pending == 3
    log.close()
    with home.engine.connect() as conn:
        rows = {
            r.id: r
            for r in conn.execute(
                sa.text("SELECT * FROM impressions WHERE id IN :ids").bindparams(
                    sa.bindparam("ids", expanding=True)
                ),
                {"ids": ids},
            )
        }
    first = rows[user.recommendation_id]
    assert (first.endpoint, first.user_id, first.model_version) == (
        "recommend",
        "u5",
        user.model_version,
    )
    assert list(_items(first.items)) == user.item_ids
    assert rows[session.recommendation_id].session_id == "visit-1"
    assert rows[similar.recommendation_id].item_id == "i3"
    assert rows[similar.recommendation_id].user_id == "u5"


def test_no_log_no_rows_but_still_an_id(home: Home) -> None:
    scorer = Scorer(home.engine)
    scorer.reload()
    with home.engine.connect() as conn:
        before = conn.execute(sa.text("SELECT count(*) FROM impressions")).scalar_one()
    assert scorer.recommend("u6", k=3).recommendation_id is not None
    with home.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM impressions")).scalar_one() == before


def test_write_impressions_stores_a_batch(home: Home) -> None:
    assert write_impressions(home.engine, [_impression(n + 1000) for n in range(3)]) == 3
    assert write_impressions(home.engine, []) == 0
    with pytest.raises(sa.exc.IntegrityError):  # the same id twice is refused
        write_impressions(home.engine, [_impression(1000)])


def _items(value: object) -> list[str]:
    import json

    return json.loads(value) if isinstance(value, str) else list(value)  # type: ignore[call-overload]
