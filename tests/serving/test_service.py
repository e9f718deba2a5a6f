"""The BentoML service class in process, and the torch-free serving import path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from serving.service import FiltersIn, Recommendations, RecsysService


@pytest.fixture
def service(home: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    for key, value in home.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RECSYS_POLL_SECONDS", "3600")
    instance = RecsysService()
    yield instance
    instance._stop.set()


def test_service_class_answers_in_process_with_the_champion(service: Any, home: Any) -> None:
    assert service.__is_ready__()
    out = service.recommend(user_id="u2", k=4, filters=FiltersIn(exclude_genres=["Drama"]))
    assert isinstance(out, Recommendations)
    assert out.model_version == home.champion and len(out.items) == 4
    assert service.model_info().model_version == home.champion
    session = service.recommend_session(item_ids=["i1", "i2"], k=3, explain=True)
    assert session.fallback is None and all(item.because for item in session.items)


SERVE_WITHOUT_TORCH = """
import json, sys
from recsys.db.engine import create_engine
import serving.service  # the module `bentoml serve` loads
from serving.scorer import Scorer
scorer = Scorer(create_engine(sys.argv[1]))
scorer.reload()
out = scorer.recommend("u1", k=3, explain=True)
print(json.dumps({"torch": "torch" in sys.modules, "version": out["model_version"]}))
"""


def test_serving_import_path_never_imports_torch(home: Any) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SERVE_WITHOUT_TORCH, home.url],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **home.env},
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"torch": False, "version": home.champion}
