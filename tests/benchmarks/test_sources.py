"""The source-sync benchmark at toy sizes: it runs end to end, and its shortcut is honest.

The incremental case writes the store's existing rows by SQL instead of syncing them; the
second test checks that this gives exactly what a sync of the same source rows stores.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pytest
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import _common
import sources as bench

from recsys.db.engine import create_engine
from recsys.db.migrate import upgrade
from recsys.sources.sync import sync_source
from recsys.sources.watermarks import read_watermark

pytestmark = pytest.mark.postgres

STORED = sa.text(
    "SELECT u.external_id, i.external_id, x.event_type, x.value, x.occurred_at"
    " FROM interactions x JOIN users u ON u.id = x.user_id JOIN items i ON i.id = x.item_id"
)


@pytest.fixture
def bench_server(postgres_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The benchmark's scratch databases go to the test server."""
    monkeypatch.setenv("RECSYS_BENCH_POSTGRES_URL", postgres_server)
    return postgres_server


def test_sources_benchmark_runs_at_toy_sizes(
    bench_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_common, "RESULTS_DIR", tmp_path)
    argv = ["sources.py", "--rows", "3000", "--existing", "5000", "--new", "200"]
    monkeypatch.setattr(sys, "argv", [*argv, "--chunk-rows", "1000", "--name", "toy"])
    bench.main()
    result = json.loads((tmp_path / "toy.json").read_text())
    assert [r["store"] for r in result["bulk"]] == ["postgresql", "sqlite"]
    for record in result["bulk"]:
        assert record["sync"]["rows_inserted"] == 3000 and record["sync"]["chunks"] >= 3
    for record in result["incremental"]:
        assert record["stored_before"] == 5000
        assert (record["sync"]["rows_read"], record["sync"]["rows_inserted"]) == (200, 200)
    assert result["watermark_index_used"], result["watermark_plan"]
    assert "Index" in (tmp_path / "toy.md").read_text()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_filled_store_holds_what_a_sync_of_the_same_rows_stores(
    bench_server: str, backend: str
) -> None:
    rows, users, items = 1500, 40, 30
    with _common.scratch_database("postgresql") as source_url:
        bench.create_source(source_url)
        bench.add_source_rows(source_url, 1, rows, users, items)
        source = bench.source_config(source_url, 400)
        with (
            _common.scratch_database(backend) as synced_url,
            _common.scratch_database(backend) as filled_url,
        ):
            synced, filled = create_engine(synced_url), create_engine(filled_url)
            upgrade(synced)
            upgrade(filled)
            with tempfile.TemporaryDirectory() as rejects:
                result = sync_source(synced, source, Path(rejects))
            bench.fill_store(filled, rows, users, items)
            with synced.connect() as a, filled.connect() as b:
                assert sorted(a.execute(STORED).all()) == sorted(b.execute(STORED).all())
            assert result.rows_inserted == rows
            watermarks = [read_watermark(e, bench.NAME, "viewed_at") for e in (synced, filled)]
            assert watermarks[0] == watermarks[1] == bench.viewed_at(rows)
            synced.dispose()
            filled.dispose()
