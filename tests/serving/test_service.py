"""The BentoML service class in process, and a serving process without torch, pandas, pyarrow."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.security import HTTPAuthorizationCredentials

from recsys.keys import create_key
from serving.api import ApiError
from serving.schemas import FiltersIn, Recommendations, RecommendIn, SessionIn
from serving.service import RecsysService

sys.path.insert(0, str(Path(__file__).parent))
from conftest import bentoml_serve

ROOT = Path(__file__).resolve().parents[2]
# What the prediction service must never load: the training and data-frame stacks.
HEAVY = ("torch", "pandas", "pyarrow")


@pytest.fixture(scope="module")
def reader(home: Any) -> HTTPAuthorizationCredentials:
    key, _ = create_key(home.engine, "in-process reader", ["read"])
    return HTTPAuthorizationCredentials(scheme="Bearer", credentials=key)


@pytest.fixture
def service(home: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    for key, value in home.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RECSYS_POLL_SECONDS", "3600")
    monkeypatch.setenv("RECSYS_SERVE_TUNING", "none")  # leave the test process's collector be
    instance = RecsysService()
    yield instance
    instance._stop.set()


def test_service_class_answers_in_process_with_the_champion(
    service: Any, home: Any, reader: Any
) -> None:
    assert service.__is_ready__()
    query = RecommendIn(user_id="u2", k=4, filters=FiltersIn(exclude_genres=["Drama"]))
    out = asyncio.run(service.recommend(query, reader))  # a coroutine: concurrent calls batch
    assert isinstance(out, Recommendations)
    assert out.model_version == home.champion and len(out.items) == 4
    assert service.model_info(reader).model_version == home.champion
    session = service.recommend_session(SessionIn(item_ids=["i1", "i2"], k=3, explain=True), reader)
    assert session.fallback is None and all(item.because for item in session.items)
    with pytest.raises(ApiError) as refused:
        service.model_info(None)
    assert refused.value.status == 401


SERVE_LIGHT = """
import json, sys
from recsys.db.engine import create_engine
import serving.service  # the module `bentoml serve` loads
from serving.scorer import Scorer
scorer = Scorer(create_engine(sys.argv[1]))
scorer.reload()
out = scorer.recommend("u1", k=3, explain=True)
loaded = [name for name in sys.argv[2:] if name in sys.modules]
print(json.dumps({"loaded": loaded, "version": out.model_version}))
"""


def test_service_concurrent_recommends_share_batches_and_keep_their_errors(
    service: Any, reader: Any
) -> None:
    def ask(**fields: Any) -> Any:
        return service.recommend(RecommendIn(**fields), reader)

    async def many() -> list[Any]:
        calls = [ask(user_id=f"u{n}", k=3) for n in range(1, 31)]
        calls.append(ask(user_id="u1", k=3, filters=FiltersIn(exclude_items=["i1"])))
        calls.append(ask(user_id="u1", k=3, filters=FiltersIn(include_genres=["Opera"])))
        calls.append(service.recommend(RecommendIn(user_id="u1", k=3), None))
        return await asyncio.gather(*calls, return_exceptions=True)

    answers = asyncio.run(many())
    assert all(isinstance(a, Recommendations) and len(a.items) == 3 for a in answers[:-1])
    assert [a.user_id for a in answers[:30]] == [f"u{n}" for n in range(1, 31)]
    assert "i1" not in {item.item_id for item in answers[30].items}
    assert "include_genres" in answers[31].warnings[0]
    assert isinstance(answers[-1], ApiError) and answers[-1].status == 401


def test_serving_import_path_never_imports_torch_pandas_or_pyarrow(home: Any) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SERVE_LIGHT, home.url, *HEAVY],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **home.env},
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"loaded": [], "version": home.champion}


def test_serving_an_indexed_champion_loads_the_index_library_but_not_torch(
    indexed_home: Any,
) -> None:
    """The item index path (encoder graph, faiss) of a large catalogue stays off torch too."""
    done = subprocess.run(
        [sys.executable, "-c", SERVE_LIGHT, indexed_home.url, *HEAVY, "faiss"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **indexed_home.env},
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"loaded": ["faiss"], "version": indexed_home.champion}


def imported_modules(log: str) -> set[str]:
    """The modules named by ``-X importtime`` lines: every import a process made, once each."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in log.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }


def test_bentoml_serve_answers_without_loading_torch_pandas_or_pyarrow(
    home: Any, reader: HTTPAuthorizationCredentials, tmp_path: Path
) -> None:
    """The real server: with PYTHONPROFILEIMPORTTIME its processes (the server and its worker)
    log each module as they import it, so the log holds what entered their ``sys.modules``,
    including anything loaded while answering the request."""
    env = {
        **home.env,
        "PYTHONPROFILEIMPORTTIME": "1",
        "RECSYS_POLL_SECONDS": "3600",
        "BENTOML_HOME": str(tmp_path / "bentoml"),
    }
    log = tmp_path / "serve.log"
    auth = {"Authorization": f"Bearer {reader.credentials}"}
    with bentoml_serve("serving.service:RecsysService", env, ROOT, log) as base:
        answer = httpx.post(f"{base}/recommend", json={"user_id": "u1", "k": 3}, headers=auth)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == home.champion
    imported = imported_modules(log.read_text())
    assert {"serving.scorer", "onnxruntime"} <= imported  # the log covers the serving worker
    assert sorted({name.split(".")[0] for name in imported} & set(HEAVY)) == []


def test_endpoints_get_their_service_on_the_loop_without_a_dependency_override() -> None:
    """Every endpoint's ``self`` comes from the coroutine, and no override is set: with one,
    FastAPI would rebuild every dependency of every request from its signature."""
    from serving import service

    assert service.app.dependency_overrides == {}
    endpoints = [
        method
        for method in vars(service.RecsysService.inner).values()  # type: ignore[attr-defined]
        if hasattr(method, "__signature__")
    ]
    assert service.ENDPOINTS_ON_THE_LOOP == len(endpoints) == 7
    for method in endpoints:
        first = next(iter(method.__signature__.parameters.values()))
        assert first.default.dependency is service._service_on_the_loop, method.__name__
