"""The service's image, as deploy/compose.yaml and deploy/kubernetes/service.yaml run it: the
champion packaged as a bento, `bentoml containerize`, and a request answered by the container.

It needs a container runtime: the docker client, a daemon that answers it, and the bento's
base image (python:3.11-slim) present or pullable. Without one of them the test skips and
says which is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from recsys import registry
from recsys.data.ingest import ingest
from recsys.data.synthetic import SyntheticConfig, generate
from recsys.db.engine import create_engine
from recsys.db.migrate import upgrade
from recsys.experiment import train_and_evaluate
from recsys.registry import registration

BASE_IMAGE = "python:3.11-slim"  # what `bentoml containerize` builds the bento's image from
PULL_TIMEOUT_S = 600
BUILD_TIMEOUT_S = 1800


def container_runtime() -> str:
    """The docker client, once its daemon answers and the base image is here; else skip."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no container runtime: the docker client is not installed")
    info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        reason = (info.stderr.strip().splitlines() or ["no answer"])[-1]
        pytest.skip(f"no container runtime: no Docker daemon answers `docker info` ({reason})")
    here = subprocess.run([docker, "image", "inspect", BASE_IMAGE], capture_output=True)
    if here.returncode != 0:
        pulled = subprocess.run(
            [docker, "pull", BASE_IMAGE], capture_output=True, text=True, timeout=PULL_TIMEOUT_S
        )
        if pulled.returncode != 0:
            reason = (pulled.stderr.strip().splitlines() or ["no answer"])[-1]
            pytest.skip(
                f"the bento's base image {BASE_IMAGE} is not here and cannot be pulled ({reason})"
            )
    return docker


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
@pytest.mark.integration
def test_the_bentos_image_answers_a_recommendation_from_its_container(tmp_path: Path) -> None:
    docker = container_runtime()
    home = tmp_path / "home"
    home.mkdir()
    url = f"sqlite:///{home / 'recsys.db'}"
    upgrade(create_engine(url))
    engine = create_engine(url)
    data = generate(SyntheticConfig(num_users=120, num_items=50, num_interactions=3000, seed=5))
    ingest(engine, data, home / "rejects")
    outcome = train_and_evaluate(engine, "ease", "loo", train_overrides={"progress": False})
    version = registration.register(engine, outcome, artifacts_dir=home / "artifacts").version
    registry.promote(engine, version, actor="tests", reason="container test")
    engine.dispose()

    env = {
        **os.environ,
        "RECSYS_HOME": str(home),
        "RECSYS_DATABASE_URL": url,
        "BENTOML_HOME": str(tmp_path / "bentoml"),
    }
    recsys = Path(sys.executable).with_name("recsys")
    built = subprocess.run(
        [str(recsys), "bento", "--json"], capture_output=True, text=True, env=env, timeout=600
    )
    assert built.returncode == 0, built.stderr
    bento = json.loads(built.stdout.strip().splitlines()[-1])["bento"]
    image = f"recsys-service-test:{uuid.uuid4().hex[:12]}"
    bentoml = Path(sys.executable).with_name("bentoml")
    containerized = subprocess.run(
        [str(bentoml), "containerize", bento, "-t", image],
        capture_output=True,
        text=True,
        env=env,
        timeout=BUILD_TIMEOUT_S,
    )
    assert containerized.returncode == 0, containerized.stderr[-3000:]

    # The container's user writes impressions to the store: the home must be writable to it.
    for path in (home, *home.rglob("*")):
        path.chmod(0o777 if path.is_dir() else 0o666)
    port = free_port()
    name = f"recsys-test-{uuid.uuid4().hex[:8]}"
    run = [docker, "run", "--detach", "--name", name, "--publish", f"127.0.0.1:{port}:3000"]
    run += ["--volume", f"{home}:{home}", "--env", f"RECSYS_HOME={home}"]
    run += ["--env", f"RECSYS_DATABASE_URL={url}", "--env", "RECSYS_READ_AUTH=open", image]
    started = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                logs = subprocess.run([docker, "logs", name], capture_output=True, text=True)
                pytest.fail(f"the container was not ready in 300 s: {logs.stderr[-3000:]}")
            time.sleep(1)
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
        answer = httpx.post(f"{base}/recommend", json={"user_id": "u1", "k": 5}, timeout=30)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert len(body["items"]) == 5 and body["model_version"] == version
    finally:
        subprocess.run([docker, "rm", "--force", name], capture_output=True, timeout=120)
        subprocess.run([docker, "image", "rm", "--force", image], capture_output=True, timeout=120)
