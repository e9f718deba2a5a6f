"""Packaging: the console script, importable packages, a CPU-only torch, layering rules."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import shutil
import sys
from pathlib import Path

import pytest

import recsys

ROOT = Path(__file__).resolve().parents[2]


def test_packages_import_and_console_script_is_installed() -> None:
    for name in ("recsys", "flows", "serving", "ui"):
        importlib.import_module(name)
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("recsys") == "recsys.cli:main"
    assert shutil.which("recsys", path=str(Path(sys.executable).parent))


def test_torch_is_the_pinned_cpu_build() -> None:
    import torch

    assert torch.__version__.startswith("2.13.0")
    assert torch.version.cuda is None
    cuda_wheels = [
        d.metadata["Name"]
        for d in importlib.metadata.distributions()
        if (d.metadata["Name"] or "")
        .lower()
        .startswith(("nvidia-cu", "nvidia-cublas", "nvidia-cudnn"))
    ]
    assert cuda_wheels == []


def test_library_never_imports_orchestration_or_serving() -> None:
    forbidden = {"prefect", "bentoml", "flows", "serving"}
    for path in Path(recsys.__file__).parent.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            roots = {n.split(".")[0] for n in names}
            assert not roots & forbidden, f"{path.relative_to(ROOT)} imports {roots & forbidden}"


def test_config_reads_environment_without_side_effects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recsys.config import get_settings

    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "h"))
    monkeypatch.delenv("RECSYS_DATABASE_URL", raising=False)
    settings = get_settings()
    assert settings.home == tmp_path / "h"
    assert settings.database_url == f"sqlite:///{tmp_path / 'h' / 'recsys.db'}"
    assert not (tmp_path / "h").exists()  # reading settings creates nothing
