"""The shape of the tree: what import-linter cannot state (.importlinter holds the layers)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ALLOWED_IN_MIGRATIONS = {"__future__", "alembic", "sqlalchemy", "collections", "typing"}
CLI_MODULE_MAX_LINES = 400


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            roots.add("." if node.level else (node.module or "").split(".")[0])
    return roots


def test_layout_migration_scripts_import_only_alembic_and_sqlalchemy() -> None:
    scripts = sorted((ROOT / "migrations" / "versions").glob("*.py"))
    assert scripts, "no migration scripts found"
    for script in scripts:
        extra = _imported_roots(script) - ALLOWED_IN_MIGRATIONS
        assert not extra, f"{script.name} imports {sorted(extra)}"


def test_layout_migration_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    script = tmp_path / "0099_bad.py"
    script.write_text("import sqlalchemy as sa\nfrom recsys.db import schema\n", encoding="utf-8")
    assert _imported_roots(script) - ALLOWED_IN_MIGRATIONS == {"recsys"}


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
