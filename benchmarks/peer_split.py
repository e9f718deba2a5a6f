"""One leave-last-out split, exported for the peer libraries, and their lists scored by ours.

Every system trains on the same training events, stops on the same validation targets and is
scored on the same test targets by recsys.evaluation (full ranking, seen items excluded):
peers hand back each test user's top-K item ids (K >= 20), which rank exactly as the full
ranking they came from for every metric at K or below.

Written to ``OUT``:

- ``train.tsv``, ``valid.tsv``, ``test.tsv``: ``user_id  item_id  timestamp`` (seconds); train
  holds every training event, valid and test one target per evaluated user.
- ``recbole/<name>/<name>.{train,valid,test}.inter``: the same rows as RecBole atomic files
  (``benchmark_filename: [train, valid, test]``).
- ``split.json``: dataset, counts, and the digests that tie a peer's lists to this split.

    .venv/bin/python benchmarks/peer_split.py --dataset ml-100k --out benchmarks/.peers/ml-100k
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from recsys.data.extract import Snapshot, extract
from recsys.data.splits import Split, split
from recsys.evaluation import EvalResult, eval_digest, evaluate

RECBOLE_HEADER = "user_id:token\titem_id:token\ttimestamp:float"


@dataclass(frozen=True)
class ExportedSplit:
    folder: Path
    train_rows: int
    valid_rows: int
    test_rows: int
    meta: dict[str, Any]


def export_split(snapshot: Snapshot, out: Path, name: str) -> ExportedSplit:
    """Write the loo split of ``snapshot`` for the peers (see the module docstring)."""
    data = split(snapshot, "loo")
    users, items = snapshot.users.ids, snapshot.items.ids
    seconds = snapshot.occurred_at // 1000
    out.mkdir(parents=True, exist_ok=True)

    train = data.train
    train_seconds = train.occurred_at // 1000
    rows = {
        "train": list(
            zip(users[train.user_idx], items[train.item_idx], train_seconds, strict=True)
        ),
        "valid": _targets(
            data.valid.users, data.valid.targets.values, users, items, seconds, snapshot, -2
        ),
        "test": _targets(
            data.test.users, data.test.targets.values, users, items, seconds, snapshot, -1
        ),
    }
    recbole = out / "recbole" / name
    recbole.mkdir(parents=True, exist_ok=True)
    for part, part_rows in rows.items():
        body = "".join(f"{u}\t{i}\t{t}\n" for u, i, t in part_rows)
        (out / f"{part}.tsv").write_text("user_id\titem_id\ttimestamp\n" + body)
        (recbole / f"{name}.{part}.inter").write_text(RECBOLE_HEADER + "\n" + body)
    meta = {
        "dataset": name,
        "protocol": "loo",
        "snapshot_digest": snapshot.descriptor.digest,
        "test_digest": eval_digest(data.test),
        "num_users": data.num_users,
        "num_items": data.num_items,
        **{f"{part}_rows": len(part_rows) for part, part_rows in rows.items()},
    }
    (out / "split.json").write_text(json.dumps(meta, indent=2) + "\n")
    return ExportedSplit(out, len(rows["train"]), len(rows["valid"]), len(rows["test"]), meta)


def _targets(
    eval_users: npt.NDArray[np.int32],
    targets: npt.NDArray[np.int32],
    users: npt.NDArray[np.object_],
    items: npt.NDArray[np.object_],
    seconds: npt.NDArray[np.int64],
    snapshot: Snapshot,
    position: int,
) -> list[tuple[Any, Any, int]]:
    """One row per evaluated user: the target item and the time of that event."""
    ends = np.cumsum(np.bincount(snapshot.user_idx, minlength=snapshot.num_users + 1))
    rows = []
    for user, item in zip(eval_users.tolist(), targets.tolist(), strict=True):
        event = ends[user] + position  # -1: the user's last event, -2: the one before
        rows.append((users[user], items[item], int(seconds[event])))
    return rows


def evaluate_lists(data: Split, snapshot: Snapshot, lists: dict[str, Sequence[str]]) -> EvalResult:
    """Score peers' top-K lists (test user id -> item ids, best first) on the test targets.

    Listed items get descending scores, everything else -inf, so a target a peer did not list
    is a miss; seen items are excluded by recsys.evaluation exactly as for our models.
    """
    user_ids, item_index = snapshot.users.ids, {i: n for n, i in enumerate(snapshot.items.ids)}
    lookup = {str(user_ids[u]): n for n, u in enumerate(data.test.users.tolist())}
    scores = np.full((len(data.test), data.num_items), -np.inf, dtype=np.float32)
    for user_id, ranked in lists.items():
        row = lookup.get(str(user_id))
        if row is None:
            continue
        for place, item_id in enumerate(ranked):
            column = item_index.get(str(item_id), 0) - 1
            if column >= 0 and not np.isfinite(scores[row, column]):
                scores[row, column] = len(ranked) - place

    def score(history: npt.NDArray[np.int64], rows_users: npt.NDArray[np.int64]) -> Any:
        rows = [lookup[str(user_ids[u])] for u in rows_users.tolist()]
        return scores[rows]

    return evaluate(score, data.test, num_items=data.num_items, protocol="loo", ks=(10, 20))


DATASETS = {
    "ml-100k": "ml-100k",
    "amazon-toys": "amazon-toys-s3rec/Amazon_Toys_and_Games.txt",
}
DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"


def load_snapshot(dataset: str, data_root: Path, scratch: Path) -> Snapshot:
    """Import a dataset into a scratch SQLite database and extract it (same way every time)."""
    from recsys.data.importers import import_movielens, import_sequences
    from recsys.data.ingest import ingest
    from recsys.db.engine import create_engine
    from recsys.db.migrate import upgrade

    url = f"sqlite:///{scratch / 'recsys.db'}"
    upgrade(create_engine(url))
    engine = create_engine(url)
    path = data_root / DATASETS[dataset]
    batch = import_movielens(path) if dataset == "ml-100k" else import_sequences(path)
    ingest(engine, batch, scratch / "rejects")
    engine.dispose()
    return extract(create_engine(url))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        snapshot = load_snapshot(args.dataset, args.data_root, Path(scratch))
        exported = export_split(snapshot, args.out, args.dataset)
    print(json.dumps(exported.meta, indent=2))


if __name__ == "__main__":
    main()
