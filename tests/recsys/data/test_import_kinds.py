"""The importer table: one reader per kind, with the event-file options the CLI and the
ingest flow share."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_read_import_one_table_for_every_kind(tmp_path: Path) -> None:
    from recsys.data.import_kinds import IMPORTERS, EventFileOptions, read_import
    from recsys.errors import DataFileError

    assert set(IMPORTERS) == {"movielens", "sequences", "csv"}
    events = tmp_path / "events.csv"
    events.write_text("who,what,when,stars\nu1,i1,1000,4\nu2,i1,2000,9\n", encoding="utf-8")
    options = EventFileOptions(
        user_col="who", item_col="what", time_col="when", rating_col="stars", max_rating=5
    )
    batch = read_import("csv", events, options)
    assert len(batch.interactions) == 1 and len(batch.rejects) == 1
    with pytest.raises(DataFileError, match="unknown import kind 'xml'"):
        read_import("xml", events)
    with pytest.raises(DataFileError, match="user and item columns"):
        read_import("csv", events)
    with pytest.raises(DataFileError, match="csv imports only"):
        read_import("sequences", events, options)
