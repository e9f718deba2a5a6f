"""Layering: who may import whom, and behaviour chosen by model classes, not their names."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import recsys
from recsys.models import MODELS

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(recsys.__file__).parent


def _loaded_after(statement: str, prefixes: tuple[str, ...]) -> list[str]:
    """Modules starting with ``prefixes`` that a fresh interpreter holds after ``statement``."""
    code = (
        f"import json, sys\n{statement}\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({prefixes!r}))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_models_never_load_the_database_layer() -> None:
    statement = "import recsys.models, recsys.data.features, recsys.data.splits"
    assert _loaded_after(statement, ("recsys.db",)) == []


def test_data_never_imports_models() -> None:
    for path in (PACKAGE / "data").rglob("*.py"):
        models = {n for n in _imports(path) if n.startswith("recsys.models")}
        assert not models, f"{path.relative_to(ROOT)} imports {models}"


def test_the_registry_package_is_light_and_its_storage_api_complete() -> None:
    statement = (
        "from recsys import registry\n"
        "registry.alias_version, registry.load_artifact, registry.get_version\n"
        "registry.CHAMPION, registry.RegistryError"
    )
    heavy = ("torch", "pandas", "pyarrow", "recsys.evaluation", "recsys.registry.promotion")
    assert _loaded_after(statement, heavy) == []


def test_default_models_are_readable_without_torch() -> None:
    """The CLI reads DEFAULT_MODELS for its option defaults, at every start."""
    statement = "from recsys.retrain import DEFAULT_MODELS"
    assert _loaded_after(statement, ("torch", "pandas", "pyarrow")) == []


def test_side_features_and_the_popularity_baseline_are_flags_of_the_model_class() -> None:
    assert {n for n, s in MODELS.items() if s.model.uses_side_features} == {"mlp"}
    assert {n for n, s in MODELS.items() if s.model.is_popularity_baseline} == {"pop"}


def test_the_training_path_needs_no_pyarrow() -> None:
    """pyarrow reads PostgreSQL snapshots only: training and evaluating a model on a snapshot
    import without it (the GPU check's offline wheel folder has no room for it)."""
    code = (
        "import sys\nsys.modules['pyarrow'] = None  # any import of it fails\n"
        "import recsys.experiment, recsys.training, recsys.evaluation, recsys.models"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr
