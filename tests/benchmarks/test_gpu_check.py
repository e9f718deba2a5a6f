"""The GPU check: what it does without a GPU, its offline requirements, its data loader.

The check itself (offline install, CUDA tests, SASRec on Amazon Toys) needs a CUDA GPU and
is run by hand (benchmarks/README.md); these tests keep what it relies on true elsewhere.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from recsys.data.extract import extract
from recsys.data.importers import import_sequences
from recsys.data.ingest import ingest
from recsys.db.engine import create_engine
from recsys.db.migrate import upgrade

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gpu_check
import quality

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
REQUIREMENTS = ROOT / "benchmarks" / "gpu_check.requirements.txt"
CUDA_MARKER = re.compile(r"mark\.cuda\b")  # what gpu_check.sh greps for
no_gpu_here = pytest.mark.skipif(
    torch.cuda.is_available() or shutil.which("nvidia-smi") is not None,
    reason="a GPU is here: the check would run it",
)


def pins() -> dict[str, str]:
    out = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"not pinned: {line}"
            out[canonicalize_name(name)] = version.strip()
    return out


@no_gpu_here
def test_without_a_gpu_the_check_says_so_and_exits_0(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable}
    env["GPU_CHECK_WHEELS"] = str(tmp_path / "absent")  # never looked at
    done = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "no CUDA GPU here: nothing to check"
    assert list(tmp_path.iterdir()) == []


@no_gpu_here
def test_a_gpu_that_torch_cannot_use_fails_the_check(tmp_path: Path) -> None:
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: Some GPU (UUID: GPU-0)'\n")
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env)
    assert done.returncode == 1
    assert "nvidia-smi lists a GPU" in done.stderr


@no_gpu_here
def test_without_a_gpu_the_driver_refuses_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["gpu_check.py"])
    assert gpu_check.main() == 0
    assert capsys.readouterr().out.strip() == gpu_check.NO_GPU


def test_the_requirements_leave_torch_and_its_cuda_packages_to_the_gpu_machine() -> None:
    names = set(pins())
    assert not {n for n in names if re.match(r"(torch|nvidia|triton)\b", n)}
    assert {"numpy", "pytest", "sqlalchemy"} <= names


def test_the_pins_sit_inside_pyproject_ranges() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        declared += [Requirement(r) for r in extra]
    pinned = pins()
    for requirement in declared:
        version = pinned.get(canonicalize_name(requirement.name))
        if version is not None:
            assert requirement.specifier.contains(version), f"{requirement} vs {version}"


def test_the_check_imports_nothing_its_requirements_lack() -> None:
    """The driver, the root conftest and every module with a `cuda` test import under a guard
    that refuses any installed package outside the list, torch and torch's own."""
    allowed = set(pins()) | {"recsys"} | _closure("torch")
    cuda_tests = [
        str(p) for p in sorted((ROOT / "tests").rglob("*.py")) if CUDA_MARKER.search(p.read_text())
    ]
    modules = [str(ROOT / "benchmarks" / "gpu_check.py"), str(ROOT / "tests" / "conftest.py")]
    code = f"""
import importlib.abc, importlib.metadata, importlib.util, sys
from packaging.utils import canonicalize_name
allowed = {sorted(allowed)!r}
owners = importlib.metadata.packages_distributions()

class Guard(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        dists = owners.get(name.split(".")[0], [])
        if dists and not any(canonicalize_name(d) in allowed for d in dists):
            raise ModuleNotFoundError(f"{{name}} ({{dists[0]}}) is not in the list", name=name)
        return None

sys.meta_path.insert(0, Guard())
sys.path.insert(0, {str(ROOT / "benchmarks")!r})
import pytest, pytest_timeout
for n, path in enumerate({modules + cuda_tests!r}):
    spec = importlib.util.spec_from_file_location(f"checked_{{n}}", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=180
    )
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1:]


def _closure(name: str) -> set[str]:
    """``name`` and what it requires, recursively, as installed here (markers applied)."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = canonicalize_name(todo.pop())
        if current in seen:
            continue
        seen.add(current)
        try:
            requires = metadata.requires(current) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


def test_the_toys_loader_gives_the_snapshot_the_store_gives(tmp_path: Path) -> None:
    path = tmp_path / "seqs.txt"
    path.write_text("u7 b a c a\nu3 a d\n\nu10 c b e d a\nu1 e e\n")
    url = f"sqlite:///{tmp_path / 'recsys.db'}"
    upgrade(create_engine(url))
    ingest(create_engine(url), import_sequences(path), tmp_path / "rejects")
    stored = extract(create_engine(url))
    loaded = gpu_check.load_sequences(path)
    assert loaded.descriptor.digest == stored.descriptor.digest
    for field in ("user_idx", "item_idx", "occurred_at", "event", "value"):
        assert np.array_equal(getattr(loaded, field), getattr(stored, field), equal_nan=True)
    assert loaded.users.to_list() == stored.users.to_list() == ["u7", "u3", "u10", "u1"]
    assert loaded.items.to_list() == stored.items.to_list()


def test_a_file_that_is_not_the_manifest_s_is_refused(tmp_path: Path) -> None:
    toys = tmp_path / gpu_check.TOYS
    toys.parent.mkdir(parents=True)
    toys.write_text("1 2 3\n")
    entry = {"path": "amazon-toys-s3rec/", "files": [{"file": toys.name, "sha256": "0" * 64}]}
    (tmp_path / "MANIFEST.json").write_text(json.dumps({"datasets": {"toys": entry}}))
    with pytest.raises(gpu_check.RecsysError, match="does not match"):
        gpu_check.check_file(toys, tmp_path)


def test_sasrec_trains_with_quality_py_s_settings_for_the_file() -> None:
    """The CPU reference row is quality.py's run: the same settings, less its budget."""
    assert quality.DATASET_SETTINGS["amazon-toys"]["sasrec"] == gpu_check.SASREC_SETTINGS
    train = dict(quality.DATASET_TRAIN_SETTINGS["amazon-toys"]["sasrec"])
    train.pop("budget_seconds")
    assert train == gpu_check.SASREC_TRAIN_SETTINGS
