"""Importers: every MovieLens layout, CSV/Parquet, sequences; bad rows counted, never lost."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine, select

from recsys.data import readers
from recsys.data.importers import (
    SEQUENCE_EPOCH_MS,
    CsvColumns,
    import_events,
    import_movielens,
    import_sequences,
)
from recsys.data.ingest import ingest
from recsys.db.queries import stats
from recsys.db.schema import items_table, users_table
from recsys.errors import DataFileError, RejectedRowsError

GENRES_100K = "unknown|0\nAction|1\nAdventure|2\nAnimation|3\nChildren's|4\nComedy|5\nCrime|6\nDocumentary|7\nDrama|8\nFantasy|9\nFilm-Noir|10\nHorror|11\nMusical|12\nMystery|13\nRomance|14\nSci-Fi|15\nThriller|16\nWar|17\nWestern|18\n"  # noqa: E501


def _flags(*on: int) -> str:
    return "|".join("1" if i in on else "0" for i in range(19))


@pytest.fixture
def ml100k(tmp_path: Path) -> Path:
    """A tiny folder in the ml-100k layout with one bad row of each kind."""
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    good = ["1\t10\t5\t881250949", "1\t20\t3\t881250950", "2\t10\t4\t891717742"]
    bad = [
        "\t20\t4\t891717742",  # missing user id
        "3\t10\tfour\t891717742",  # rating not a number
        "3\t20\t7\t891717742",  # rating out of range
        "3\t30\t4\tyesterday",  # timestamp does not parse
        "3\t30\t4\t99999999999",  # far in the future
        "3\t30\t4",  # wrong column count
    ]
    data = ("\n".join(good + bad) + "\n").encode() + b"4\t10\t4\t8\xff\xfe91717742\n"
    (folder / "u.data").write_bytes(data)
    (folder / "u.genre").write_text(GENRES_100K)
    items = [
        f"10|Toy Story (1995)|01-Jan-1995||http://x/10|{_flags(3, 4, 5)}",
        f"20|Café Society (1995)|01-Jan-1995||http://x/20|{_flags(8)}",
        f"30|Heat|15-Dec-1995||http://x/30|{_flags(1, 6, 16)}",
    ]
    (folder / "u.item").write_bytes("\n".join(items).encode("latin-1"))
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    return folder


def test_movielens_100k_counts_every_bad_row_per_reason(ml100k: Path) -> None:
    batch = import_movielens(ml100k)
    assert len(batch.interactions) == 3
    assert batch.rows_read == 10
    assert batch.rejects_by_reason == {
        readers.BAD_TIMESTAMP: 1,
        readers.BAD_VALUE: 1,
        readers.COLUMN_COUNT: 1,
        readers.ENCODING: 1,
        readers.IMPOSSIBLE_TIMESTAMP: 1,
        readers.MISSING_ID: 1,
        readers.VALUE_OUT_OF_RANGE: 1,
    }
    assert {r.line for r in batch.rejects} == set(range(4, 11))
    assert all(r.raw for r in batch.rejects)


def test_movielens_100k_items_and_users_get_attributes(ml100k: Path) -> None:
    batch = import_movielens(ml100k)
    items = batch.items.set_index("item_id")
    assert items.loc["10", "genres"] == ["Animation", "Children's", "Comedy"]
    assert items.loc["10", "year"] == 1995
    assert items.loc["20", "title"] == "Café Society (1995)"  # latin-1 decoded
    assert items.loc["30", "year"] == 1995  # from the release date when the title has none
    users = batch.users.set_index("user_id")
    assert (users.loc["1", "age"], users.loc["1", "gender"]) == (24, "M")
    assert users.loc["2", "occupation"] == "other"
    event = batch.interactions.iloc[0]
    assert (event["event_type"], event["value"], event["occurred_at"]) == (
        "rating",
        5.0,
        881250949000,
    )


def test_movielens_1m_dat_layout(tmp_path: Path) -> None:
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n")
    (folder / "movies.dat").write_bytes(
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::Señor (1996)::Animation|Musical\n".encode(  # noqa: E501
            "latin-1"
        )
    )
    (folder / "users.dat").write_text("1::F::1::10::48067\n")
    batch = import_movielens(folder)
    assert len(batch.interactions) == 2 and not batch.rejects
    items = batch.items.set_index("item_id")
    assert items.loc["661", "genres"] == ["Animation", "Musical"]
    assert items.loc["661", "title"] == "Señor (1996)"
    assert items.loc["1193", "year"] == 1975
    user = batch.users.iloc[0]
    assert (user["gender"], user["age"], user["occupation"]) == ("F", 1, "K-12 student")


def test_movielens_latest_csv_layout(tmp_path: Path) -> None:
    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n2,1,0.5,964982224\n"
    )
    (folder / "movies.csv").write_text(
        'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n3,"Grumpier Old Men, The (1995)",(no genres listed)\n'  # noqa: E501
    )
    batch = import_movielens(folder)
    assert len(batch.interactions) == 3 and not batch.rejects
    items = batch.items.set_index("item_id")
    assert items.loc["3", "title"] == "Grumpier Old Men, The (1995)"
    assert items.loc["3", "genres"] == []
    assert batch.users.empty


def test_movielens_unknown_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="not a MovieLens folder"):
        import_movielens(tmp_path)
    with pytest.raises(DataFileError, match="not a folder"):
        import_movielens(tmp_path / "missing")


def test_ingest_writes_rejects_file_and_loads_the_rest(
    engine: Engine, ml100k: Path, tmp_path: Path
) -> None:
    result = ingest(engine, import_movielens(ml100k), tmp_path / "rejects")
    assert result.rows_inserted == 3
    assert result.rows_rejected == 7
    assert result.rejects_path is not None
    with open(result.rejects_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 7
    assert {r["reason"] for r in rows} >= {"encoding", "column_count", "missing_id"}
    assert rows[0]["file"] == "u.data"
    with engine.connect() as conn:
        titles = dict(conn.execute(select(items_table.c.external_id, items_table.c.title)).all())
        ages = dict(conn.execute(select(users_table.c.external_id, users_table.c.age)).all())
    assert titles["10"] == "Toy Story (1995)"
    assert ages == {"1": 24, "2": 53}


def test_ingest_strict_writes_nothing(engine: Engine, ml100k: Path, tmp_path: Path) -> None:
    with pytest.raises(RejectedRowsError, match="7 rows rejected"):
        ingest(engine, import_movielens(ml100k), tmp_path / "rejects", strict=True)
    assert stats(engine)["interactions"] == 0
    assert stats(engine)["items"] == 0


def test_movielens_100k_real_dataset_counts_and_idempotence(
    engine: Engine, tmp_path: Path, shared_dataset: Callable[[str], Path]
) -> None:
    path = shared_dataset("ml-100k")
    first = ingest(engine, import_movielens(path), tmp_path)
    assert first.rows_inserted == 100_000 and first.rows_rejected == 0
    counts = stats(engine)
    assert (counts["interactions"], counts["users"], counts["items"]) == (100_000, 943, 1_682)
    second = ingest(engine, import_movielens(path), tmp_path)
    assert (second.rows_inserted, second.rows_skipped) == (0, 100_000)
    assert stats(engine)["interactions"] == 100_000


def test_sequences_real_dataset_counts(
    engine: Engine, tmp_path: Path, shared_dataset: Callable[[str], Path]
) -> None:
    path = shared_dataset("amazon-toys-s3rec") / "Amazon_Toys_and_Games.txt"
    result = ingest(engine, import_sequences(path), tmp_path)
    assert result.rows_inserted == 167_597
    counts = stats(engine)
    assert (counts["users"], counts["items"]) == (19_412, 11_924)


def test_sequences_keep_order_through_occurred_at(tmp_path: Path) -> None:
    path = tmp_path / "seq.txt"
    path.write_bytes(b"u1 a b c a\nu2 c\nu3\nu4 \xff\xfe x\n")
    batch = import_sequences(path)
    u1 = batch.interactions[batch.interactions["user_id"] == "u1"]
    assert u1["item_id"].tolist() == ["a", "b", "c", "a"]
    assert np.all(np.diff(u1["occurred_at"].to_numpy()) > 0)
    assert u1["occurred_at"].iloc[0] == SEQUENCE_EPOCH_MS
    assert batch.rejects_by_reason == {"empty_sequence": 1, "encoding": 1}


def test_csv_with_columns_iso_times_and_event_type_column(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text(
        "who,what,when,kind,stars\n"
        "alice,book-1,2024-05-01T10:00:00Z,view,\n"
        "alice,book-2,2024-05-01T10:05:00+02:00,rating,4\n"
        "bob,book-1,1714557600,purchase,\n"
        'bob,"book,3",1714557600123,view,\n'
        "carol,book-1,,view,\n"
        "dave,book-1,2024-05-01,view,1,extra\n"
    )
    batch = import_events(
        path,
        CsvColumns(user="who", item="what", time="when", value="stars", event_type="kind"),
        value_range=readers.ValueRange(1, 5),
    )
    events = batch.interactions
    assert events["event_type"].tolist() == ["view", "rating", "purchase", "view"]
    assert events["occurred_at"].tolist() == [
        1714557600000,
        1714550700000,  # 08:05 UTC
        1714557600000,
        1714557600123,
    ]
    assert events["item_id"].tolist()[3] == "book,3"
    assert batch.rejects_by_reason == {"bad_timestamp": 1, "column_count": 1}


def test_csv_without_time_column_keeps_file_order(tmp_path: Path) -> None:
    path = tmp_path / "log.tsv"
    path.write_text("user\titem\nu\tb\nu\ta\n")
    batch = import_events(path, CsvColumns(user="user", item="item"), event_type="click")
    assert batch.interactions["item_id"].tolist() == ["b", "a"]
    assert batch.interactions["occurred_at"].is_monotonic_increasing
    assert set(batch.interactions["event_type"]) == {"click"}


def test_csv_unknown_column_lists_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text("user,item\nu,i\n")
    with pytest.raises(DataFileError, match=r"no column 'when' .* columns are user, item"):
        import_events(path, CsvColumns(user="user", item="item", time="when"))


def test_parquet_import_and_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    pd.DataFrame(
        {"u": ["a", "b", None], "i": ["x", "y", "z"], "t": [1_700_000_000, 1_700_000_001, 1]}
    ).to_parquet(path)
    batch = import_events(path, CsvColumns(user="u", item="i", time="t"), time_unit="s")
    assert batch.interactions["user_id"].tolist() == ["a", "b"]
    assert batch.rejects_by_reason == {"missing_id": 1}
    assert batch.kind == "parquet"

    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataFileError, match="cannot read Parquet file"):
        import_events(truncated, CsvColumns(user="u", item="i"))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="file not found"):
        import_sequences(tmp_path / "nope.txt")
    with pytest.raises(DataFileError, match="file not found"):
        import_events(tmp_path / "nope.csv", CsvColumns(user="u", item="i"))


def test_csv_with_attribute_files(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text("user_id,item_id\nu1,i1\n")
    (tmp_path / "items.csv").write_text(
        "item_id,title,genres,year,price,brand\ni1,Lego,Toys|Bricks,2020,19.99,ACME\n,no id,,,,\n"
    )
    (tmp_path / "users.csv").write_text("user_id,age,gender\nu1,31,F\n")
    batch = import_events(
        tmp_path / "e.csv",
        CsvColumns(user="user_id", item="item_id"),
        items_path=tmp_path / "items.csv",
        users_path=tmp_path / "users.csv",
    )
    item = batch.items.iloc[0]
    assert item["genres"] == ["Toys", "Bricks"]
    assert (item["year"], item["price"], item["attributes"]) == (2020, 19.99, {"brand": "ACME"})
    assert batch.users.iloc[0]["age"] == 31
    assert batch.rejects_by_reason == {"missing_id": 1}
