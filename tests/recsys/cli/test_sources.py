"""``recsys sources check`` and ``recsys sources sync`` over the shop on SQLite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from recsys.cli import app

from ..sources.conftest import PURCHASES_STORED, fill, write_sources

runner = CliRunner()


@pytest.fixture
def shop_sources(
    recsys_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    engine = sa.create_engine(url)
    fill(engine)
    engine.dispose()
    path = write_sources(tmp_path / "recsys.toml", url)
    monkeypatch.setenv("RECSYS_SOURCES_FILE", str(path))
    return path


def _json_tail(output: str) -> dict[str, list[dict[str, object]]]:
    return json.loads(output.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_cli_sources_check_then_sync_twice(shop_sources: Path) -> None:
    checked = runner.invoke(app, ["sources", "check", "--json"])
    assert checked.exit_code == 0, checked.output
    reports = {r["source"]: r for r in _json_tail(checked.output)["sources"]}
    assert set(reports) == {"purchases", "views", "products", "customers"}
    assert reports["purchases"]["sample_rejected"] == 2

    synced = runner.invoke(app, ["sources", "sync", "purchases", "--json"])
    assert synced.exit_code == 0, synced.output
    (purchases,) = _json_tail(synced.output)["sources"]
    assert purchases["rows_inserted"] == PURCHASES_STORED
    assert purchases["rejects_by_reason"] == {"impossible_timestamp": 1, "missing_id": 1}
    assert Path(str(purchases["rejects_file"])).is_file()
    assert purchases["watermark"] == "8"

    table = runner.invoke(app, ["sources", "sync"])
    assert table.exit_code == 0, table.output
    assert "rows_already_stored" in table.output and "watermark" in table.output
    again = runner.invoke(app, ["sources", "sync", "--json"])
    assert sum(int(str(r["rows_inserted"])) for r in _json_tail(again.output)["sources"]) == 0


def test_cli_sources_errors_are_one_line(shop_sources: Path) -> None:
    unknown = runner.invoke(app, ["sources", "sync", "clicks"])
    assert unknown.exit_code == 1
    assert unknown.output.strip().splitlines() == [
        "error: no source named 'clicks'; sources are purchases, views, products, customers"
    ]
    shop_sources.write_text(shop_sources.read_text().replace('item = "sku"', 'item = "product"'))
    wrong = runner.invoke(app, ["sources", "check", "views"])
    assert wrong.exit_code == 1
    (line,) = wrong.output.strip().splitlines()
    assert line.startswith("error: source views: no column 'product' for item; columns are ")
