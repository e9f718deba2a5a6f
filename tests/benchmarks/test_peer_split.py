"""The peers' split export: identical events, no target leaking into training, our scoring."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

from recsys.data.extract import Snapshot, extract
from recsys.data.ingest import ingest
from recsys.data.splits import split
from recsys.data.synthetic import SyntheticConfig, generate
from recsys.db.engine import create_engine
from recsys.db.migrate import upgrade

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from peer_split import evaluate_lists, export_split


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    folder = tmp_path_factory.mktemp("peers")
    url = f"sqlite:///{folder / 'recsys.db'}"
    upgrade(create_engine(url))
    batch = generate(SyntheticConfig(num_users=120, num_items=60, num_interactions=3000, seed=8))
    ingest(create_engine(url), batch, folder / "rejects")
    return extract(create_engine(url))


def read(path: Path) -> list[tuple[str, str, int]]:
    with path.open() as handle:
        rows = list(csv.reader(handle, delimiter="\t"))[1:]
    return [(u, i, int(t)) for u, i, t in rows]


def test_peer_split_export_holds_every_event_once_and_targets_come_last(
    snapshot,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    exported = export_split(snapshot, tmp_path / "out", "synthetic")
    train, valid, test = (read(tmp_path / "out" / f"{p}.tsv") for p in ("train", "valid", "test"))
    assert len(train) + len(valid) + len(test) == len(snapshot)
    data = split(snapshot, "loo")
    assert len(test) == len(valid) == len(data.test) and len(train) == len(data.train)
    last_train: dict[str, int] = {}
    for user, _, stamp in train:
        last_train[user] = max(stamp, last_train.get(user, 0))
    valid_at = {user: stamp for user, _, stamp in valid}
    for user, _, stamp in test:
        assert last_train[user] <= valid_at[user] <= stamp  # nothing after a target trains
    expected = {
        (str(snapshot.users.ids[u]), str(snapshot.items.ids[t]))
        for u, t in zip(data.test.users, data.test.targets.values, strict=True)
    }
    assert {(u, i) for u, i, _ in test} == expected
    recbole = tmp_path / "out" / "recbole" / "synthetic" / "synthetic.test.inter"
    lines = recbole.read_text().splitlines()
    assert (
        lines[0] == "user_id:token\titem_id:token\ttimestamp:float" and len(lines) == len(test) + 1
    )
    assert exported.meta["test_rows"] == len(test)


def test_peer_lists_are_scored_by_our_full_ranking_evaluation(snapshot: Snapshot) -> None:
    data = split(snapshot, "loo")
    users, items = snapshot.users.ids, snapshot.items.ids
    perfect: dict[str, list[str]] = {}
    seen_first: dict[str, list[str]] = {}
    for row, (user, target) in enumerate(
        zip(data.test.users, data.test.targets.values, strict=True)
    ):
        seen = str(items[data.test.history.row(row)[0]])
        perfect[str(users[user])] = [str(items[target])]
        seen_first[str(users[user])] = [seen, str(items[target])]  # a seen item is excluded
    assert evaluate_lists(data, snapshot, perfect).mean("ndcg@10") == pytest.approx(1.0)
    assert evaluate_lists(data, snapshot, seen_first).mean("ndcg@10") == pytest.approx(1.0)
    assert evaluate_lists(data, snapshot, {}).mean("hr@20") == 0.0


def test_time_to_best_target_counts_a_budget_stop_as_a_lower_bound() -> None:
    from peers import time_to_best_target

    def row(seconds: float, stopped: str) -> dict[str, object]:
        return {"seconds_to_best": seconds, "stopped": stopped}

    def verdict(ours: dict[str, object], theirs: dict[str, object]) -> str:
        return str(time_to_best_target(ours, theirs, "peer")["verdict"])

    assert verdict(row(100, "patience"), row(300, "patience")) == "PASS"
    assert verdict(row(100, "patience"), row(300, "budget")) == "PASS"  # theirs is >= 300
    assert verdict(row(100, "budget"), row(300, "patience")) == "INCONCLUSIVE"  # ours is >= 100
    assert verdict(row(200, "patience"), row(300, "patience")) == "FAIL"
    assert "lower bound" in str(time_to_best_target(row(1, "budget"), row(9, "x"), "p")["measured"])
