"""`recsys ui`: the dashboard starts only on a database at the code's schema (a real start is
in tests/ui/test_browser.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from recsys.cli import app


def test_recsys_ui_refuses_an_outdated_schema_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    monkeypatch.delenv("RECSYS_DATABASE_URL", raising=False)
    result = CliRunner().invoke(app, ["ui", "--port", "8081"])
    assert result.exit_code == 1
    assert "error: database schema is at nothing" in result.output
    assert "Traceback" not in result.output
