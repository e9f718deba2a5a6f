"""Packaging: the champion goes through BentoML's model store into a bento that serves it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from recsys.keys import create_key

sys.path.insert(0, str(Path(__file__).parent))
from conftest import bentoml_serve, free_port, make_home, running


@pytest.mark.slow
def test_bento_carries_the_champion_and_serves_on_a_fresh_home(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    env = {**os.environ, **home.env, "BENTOML_HOME": str(tmp_path / "bentoml")}
    recsys = Path(sys.executable).with_name("recsys")
    built = subprocess.run(
        [str(recsys), "bento", "--json"], capture_output=True, text=True, env=env, timeout=300
    )
    assert built.returncode == 0, built.stderr
    tags = json.loads(built.stdout.strip().splitlines()[-1])
    assert tags["model"].startswith("recsys-champion:") and tags["bento"].startswith("recsys:")

    # Another machine: a fresh RECSYS_HOME and no access to the registry's artifact folder.
    shutil.move(home.path / "artifacts", tmp_path / "elsewhere")
    serve_env = {
        **env,
        "RECSYS_HOME": str(tmp_path / "fresh-home"),
        "RECSYS_POLL_SECONDS": "3600",
    }
    key, _ = create_key(home.engine, "bento test", ["read"])
    auth = {"Authorization": f"Bearer {key}"}
    with bentoml_serve(tags["bento"], serve_env, tmp_path, tmp_path / "serve.log") as base:
        info = httpx.post(f"{base}/model", headers=auth).json()
        assert info["model_version"] == home.champion and info["source"] == "bento"
        assert "does not exist" in info["last_reload_error"]  # the registry's copy is not here
        response = httpx.post(f"{base}/recommend", json={"user_id": "u1", "k": 3}, headers=auth)
        assert response.status_code == 200 and response.json()["model_version"] == home.champion


@pytest.mark.slow
def test_recsys_serve_starts_the_service_on_the_champion(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    port = free_port()
    command = [str(Path(sys.executable).with_name("recsys")), "serve", "--port", str(port)]
    key, _ = create_key(home.engine, "serve test", ["read"])
    with running(command, port, home.env, tmp_path, tmp_path / "serve.log", 90) as base:
        info = httpx.get(f"{base}/model", headers={"Authorization": f"Bearer {key}"}).json()
        assert info["model_version"] == home.champion and info["source"] == "registry"
