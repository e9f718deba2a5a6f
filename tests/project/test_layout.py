"""The shape of the tree: what import-linter cannot state (.importlinter holds the layers;
tests/recsys/db/test_migrations.py checks what migration scripts import)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLI_MODULE_MAX_LINES = 400


def test_layout_cli_modules_stay_small() -> None:
    sizes = {
        path.name: len(path.read_text(encoding="utf-8").splitlines())
        for path in (ROOT / "recsys" / "cli").glob("*.py")
    }
    assert {"__init__.py", "output.py", "runner.py", "demo.py"} <= set(sizes)
    assert max(sizes.values()) <= CLI_MODULE_MAX_LINES, sizes


def test_layout_tests_mirror_the_tree() -> None:
    """tests/<part>/<pkg>/test_x.py sits beside a <part>/<pkg>/ of the project itself."""
    tests = ROOT / "tests"
    misplaced = []
    for path in sorted(tests.rglob("test_*.py")):
        folder = path.parent.relative_to(tests)
        if folder.parts[:1] == ("project",):
            continue
        if not folder.parts or not (ROOT / folder).is_dir():
            misplaced.append(str(path.relative_to(ROOT)))
    assert misplaced == []
