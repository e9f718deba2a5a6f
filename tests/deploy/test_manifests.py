"""The production stack's files: the Kubernetes manifests against the Kubernetes JSON schemas
(kubernetes-validate ships them), the compose file against the compose specification's
schema (vendored by check-jsonschema), both offline; and what the schemas cannot say: the
probes are the service's health paths, every container has resources, secrets come only from
the environment or a Kubernetes Secret, and the commands are ones the CLI accepts."""

from __future__ import annotations

import json
import re
import shlex
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from recsys.cli import app
from serving.api import INFRA_PATHS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
MANIFESTS = sorted(KUBERNETES.glob("*.yaml"))
# The oldest Kubernetes the manifests promise to fit, and the newest whose schemas ship.
KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
SECRETS = {"RECSYS_DATABASE_URL", "RECSYS_ADMIN_TOKEN", "POSTGRES_PASSWORD"}
BENTOML_PORT = 3000  # what `bentoml serve` (and the bento's image) listens on


def documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (path.name, doc)
        for path in MANIFESTS
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in documents() if doc["kind"] == kind}


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]["template"]["spec"]
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def workloads() -> list[dict[str, Any]]:
    return [doc for _, doc in documents() if doc["kind"] in ("Deployment", "Job")]


def cli_accepts(argv: list[str]) -> None:
    """``argv`` (``recsys ...``) names a command and options the real CLI knows; nothing runs
    (``--help`` answers once the whole line has parsed: an unknown option fails first)."""
    assert argv[0] == "recsys", argv
    done = CliRunner().invoke(app, [*argv[1:], "--help"])
    assert done.exit_code == 0, (argv, done.output)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_kubernetes_manifests_validate_against_the_kubernetes_schemas(
    path: Path, version: str
) -> None:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # unknown fields fail too


def test_the_manifests_hold_the_service_workers_autoscaler_and_upgrade_job() -> None:
    kinds = {(doc["kind"], doc["metadata"]["name"]) for _, doc in documents()}
    assert {
        ("Deployment", "recsys-service"),
        ("Service", "recsys-service"),
        ("HorizontalPodAutoscaler", "recsys-service"),
        ("Deployment", "prefect-worker"),
        ("Deployment", "prefect-worker-train"),
        ("Job", "recsys-db-upgrade"),
        ("Job", "recsys-deployments"),
        ("PersistentVolumeClaim", "recsys-home"),
        ("ConfigMap", "recsys-config"),
    } <= kinds
    assert not any(kind == "Secret" for kind, _ in kinds)  # secrets are never committed


def test_the_service_is_probed_on_its_health_paths_and_scaled_on_cpu() -> None:
    service = by_kind("Deployment")["recsys-service"]
    (container,) = containers(service)
    (port,) = container["ports"]
    assert port["containerPort"] == BENTOML_PORT
    ready, live = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert ready["path"] == "/readyz" and live["path"] == "/healthz"
    assert {ready["path"], live["path"]} <= set(INFRA_PATHS)  # the paths the service answers
    assert ready["port"] == live["port"] == port["name"]
    hpa = by_kind("HorizontalPodAutoscaler")["recsys-service"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "recsys-service",
    }
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    selector = by_kind("Service")["recsys-service"]["spec"]["selector"]
    assert selector.items() <= service["spec"]["template"]["metadata"]["labels"].items()


def test_every_container_has_requests_and_limits() -> None:
    for doc in workloads():
        for container in containers(doc):
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), doc["metadata"]
            assert {"cpu", "memory"} <= set(resources.get("limits", {})), doc["metadata"]
    train = containers(by_kind("Deployment")["prefect-worker-train"])[0]
    assert train["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_secrets_come_only_from_the_kubernetes_secret() -> None:
    for doc in workloads():
        for container in containers(doc):
            for variable in container.get("env", []):
                if variable["name"] in SECRETS:
                    assert "value" not in variable, (doc["metadata"]["name"], variable)
                    assert variable["valueFrom"]["secretKeyRef"]["name"] == "recsys-secrets"
    config = by_kind("ConfigMap")["recsys-config"]["data"]
    assert not SECRETS & set(config)
    assert not any(re.search(r"://[^/@\s]+:[^/@\s]+@", value) for value in config.values())


def test_the_jobs_and_workers_run_commands_the_cli_and_prefect_accept() -> None:
    jobs = by_kind("Job")
    upgrade = containers(jobs["recsys-db-upgrade"])[0]["command"]
    assert upgrade == ["recsys", "db", "upgrade"]
    cli_accepts(upgrade)
    deploy = containers(jobs["recsys-deployments"])[0]["command"]
    cli_accepts(deploy)
    train_queue = deploy[deploy.index("--train-queue") + 1]
    queues = {}
    for name in ("prefect-worker", "prefect-worker-train"):
        command = containers(by_kind("Deployment")[name])[0]["command"]
        assert command[:3] == ["prefect", "worker", "start"]
        assert command[command.index("--pool") + 1] == deploy[deploy.index("--pool") + 1]
        queues[name] = command[command.index("--work-queue") + 1]
    # The GPU worker takes the retrain's queue; the other worker leaves it alone.
    assert queues == {"prefect-worker": "default", "prefect-worker-train": train_queue}
    home = by_kind("ConfigMap")["recsys-config"]["data"]["RECSYS_HOME"]
    for name in ("prefect-worker", "prefect-worker-train", "recsys-service"):
        mounts = containers(by_kind("Deployment")[name])[0]["volumeMounts"]
        assert any(m["name"] == "recsys-home" and m["mountPath"] == home for m in mounts), name


# compose ----------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def test_compose_file_validates_against_the_compose_specification() -> None:
    schema = json.loads(
        (files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text()
    )
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose())]
    assert errors == []


def test_compose_runs_the_stack_with_health_checks_and_a_shared_home() -> None:
    services = compose()["services"]
    assert {"postgres", "prefect-server", "db-upgrade", "deployments", "worker", "service"} <= set(
        services
    )
    for name in ("postgres", "prefect-server", "worker", "service"):
        assert "healthcheck" in services[name], name
    assert "/readyz" in " ".join(services["service"]["healthcheck"]["test"])
    assert services["db-upgrade"]["command"] == ["recsys", "db", "upgrade"]
    cli_accepts(services["deployments"]["command"])
    worker = services["worker"]["command"]
    assert worker[:3] == ["prefect", "worker", "start"] and "--with-healthcheck" in worker
    pool = services["deployments"]["command"]
    assert worker[worker.index("--pool") + 1] == pool[pool.index("--pool") + 1]
    home = services["worker"]["environment"]["RECSYS_HOME"]
    assert home == services["service"]["environment"]["RECSYS_HOME"]
    for name in ("worker", "service"):  # artifacts are found at the path the registry stored
        assert any(v.split(":")[:2] == ["recsys-home", home] for v in services[name]["volumes"])


def test_compose_takes_its_secrets_from_the_environment_and_requires_them() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    for name in ("POSTGRES_PASSWORD", "RECSYS_ADMIN_TOKEN"):
        uses = re.findall(rf"\$\{{{name}[^}}]*\}}", text)
        assert uses and all(use.startswith(f"${{{name}:?") for use in uses), uses
    for service in compose()["services"].values():
        for key, value in (service.get("environment") or {}).items():
            if key in SECRETS or "PASSWORD" in key:
                assert "${" in str(value), (key, value)


def test_the_image_pins_the_projects_torch() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    (pin,) = re.findall(r'"torch==([^"]+)"', pyproject)
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.findall(r"torch==([0-9.]+)", dockerfile) == [pin]
    copied = {shlex.split(line)[1] for line in dockerfile.splitlines() if line.startswith("COPY ")}
    assert {"recsys", "flows", "serving", "migrations"} <= copied  # what `db upgrade` needs
