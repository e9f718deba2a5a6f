"""Quality floors on real data (slow): a regression in a model or the loop shows up here.

Floors sit a little below what `benchmarks/quality.py --dataset ml-100k` measures (see
benchmarks/results/quality-ml-100k-loo.md); they are floors, never exact numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from recsys.data.extract import Snapshot, extract
from recsys.data.importers import import_movielens
from recsys.data.ingest import ingest
from recsys.data.splits import Split, split
from recsys.db.engine import create_engine
from recsys.db.migrate import upgrade
from recsys.evaluation import compare
from recsys.experiment import Outcome, train_and_evaluate

pytestmark = pytest.mark.slow

# ml-100k, loo, full ranking with seen items excluded: NDCG@10 floors.
FLOORS = {
    "pop": 0.020,
    "ease": 0.033,
    "mlp": 0.022,
    "neumf": 0.032,
    "multvae": 0.028,
    "caser": 0.050,
    "gru4rec": 0.065,
    "sasrec": 0.080,
}


@pytest.fixture(scope="module")
def ml100k(
    tmp_path_factory: pytest.TempPathFactory, shared_dataset: Callable[[str], Path]
) -> tuple[str, Snapshot, Split]:
    path = shared_dataset("ml-100k")
    home = tmp_path_factory.mktemp("quality")
    url = f"sqlite:///{home / 'recsys.db'}"
    upgrade(create_engine(url))
    engine = create_engine(url)
    ingest(engine, import_movielens(path), home / "rejects")
    engine.dispose()
    snapshot = extract(create_engine(url))
    return url, snapshot, split(snapshot, "loo")


@pytest.fixture(scope="module")
def outcomes(ml100k: tuple[str, Snapshot, Split]) -> dict[str, Outcome]:
    url, snapshot, data = ml100k
    return {
        name: train_and_evaluate(create_engine(url), name, "loo", snapshot=snapshot, data=data)
        for name in FLOORS
    }


@pytest.mark.parametrize("name", list(FLOORS))
def test_quality_ml100k_ndcg_floor(name: str, outcomes: dict[str, Outcome]) -> None:
    ndcg = outcomes[name].test.mean("ndcg@10")
    assert ndcg >= FLOORS[name], f"{name}: NDCG@10 {ndcg:.4f} < floor {FLOORS[name]}"


@pytest.mark.parametrize("name", [n for n in FLOORS if n not in ("pop", "ease")])
def test_quality_ml100k_learned_models_beat_popularity(
    name: str, outcomes: dict[str, Outcome]
) -> None:
    result = compare(outcomes["pop"].test, outcomes[name].test, "ndcg@10")
    assert result["diff"] > 0, f"{name} does not beat pop: {result}"


def test_quality_ml100k_best_model_beats_ease(outcomes: dict[str, Outcome]) -> None:
    learned = [n for n in FLOORS if n not in ("pop", "ease")]
    best = max(learned, key=lambda n: outcomes[n].test.mean("ndcg@10"))
    result = compare(outcomes["ease"].test, outcomes[best].test, "ndcg@10")
    assert result["ci_low"] > 0, f"{best} vs ease: {result}"
