"""Importers: every MovieLens layout, CSV/Parquet, sequences; bad rows counted, never lost."""

from __future__ import annotations

import csv
import gzip
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine, select

from recsys.data import readers
from recsys.data.frames import ImportBatch, Reject
from recsys.data.importers import (
    SEQUENCE_EPOCH_MS,
    CsvColumns,
    import_events,
    import_movielens,
    import_sequences,
)
from recsys.data.ingest import ingest, write_rejects
from recsys.data.load import LoadResult
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


@pytest.mark.slow
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
    assert batch.rejects == [] and batch.rows_read == 1
    assert batch.catalogue_rejects_by_reason == {"missing_id": 1}


def _csv(path: Path, text: str | bytes) -> Path:
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return path


def _sums_up(result: LoadResult) -> bool:
    return result.rows_read == result.rows_inserted + result.rows_skipped + result.rows_rejected


def test_csv_unterminated_quote_rejects_only_its_line(engine: Engine, tmp_path: Path) -> None:
    rows = [f"u{i % 7},i{i},{1_600_000_000 + i}" for i in range(1000)]
    rows[99] = 'u1,"i5,1600000099'
    path = _csv(tmp_path / "events.csv", "user,item,ts\n" + "\n".join(rows) + "\n")
    batch = import_events(path, CsvColumns(user="user", item="item", time="ts"))
    result = ingest(engine, batch, tmp_path / "rejects")
    assert (result.rows_read, result.rows_inserted, result.rows_rejected) == (1000, 999, 1)
    assert batch.rejects == [Reject("events.csv", 101, "malformed_csv", rows[99])]


def test_csv_quoted_field_spans_lines_as_one_record(tmp_path: Path) -> None:
    path = _csv(
        tmp_path / "events.csv",
        "user,item,ts,note\r\n"
        'u1,i1,1600000000,"two\r\nlines"\r\n'
        "u2,i2,1600000001,plain\r\n"
        'u3,i3,1600000002,"a ""quoted"" word, a comma"\r\n',
    )
    table = readers.read_csv_table(path)
    assert table.lines == [2, 4, 5] and table.lines_read == 3 and not table.rejects
    assert [r[3] for r in table.rows] == ["two\nlines", "plain", 'a "quoted" word, a comma']
    assert table.raw[0] == 'u1,i1,1600000000,"two\nlines"'


def test_csv_quote_open_past_the_line_bound_is_rejected(tmp_path: Path) -> None:
    span = 64
    middle = [f"u2,i{k},1600000001" for k in range(span)]
    text = "user,item,ts\n" + "\n".join(['u1,i1,"1600000000', *middle, '"']) + "\n"
    table = readers.read_csv_table(_csv(tmp_path / "events.csv", text))
    assert [(r.line, r.reason) for r in table.rejects] == [
        (2, "malformed_csv"),
        (span + 3, "malformed_csv"),
    ]
    assert table.lines == list(range(3, span + 3)) and table.lines_read == span + 2
    assert span == readers.MAX_QUOTED_LINES


@pytest.mark.parametrize(
    ("last", "reason"),
    [('u9,"i9,16000', "malformed_csv"), ("u9,i9", "column_count"), ('u9,"i9"x,1', "malformed_csv")],
)
def test_csv_bad_last_record_is_rejected_at_its_line(
    tmp_path: Path, last: str, reason: str
) -> None:
    path = _csv(tmp_path / "events.csv", f"user,item,ts\nu1,i1,1600000000\n{last}")
    batch = import_events(path, CsvColumns(user="user", item="item", time="ts"))
    assert batch.rows_read == 2 and len(batch.interactions) == 1
    assert batch.rejects == [Reject("events.csv", 3, reason, last)]


@pytest.mark.parametrize("undecodable", [False, True], ids=["utf-8", "one-bad-byte"])
def test_csv_records_end_only_at_newline(tmp_path: Path, undecodable: bool) -> None:
    rows = [
        "u1\u2028x,i1,1600000000",  # U+2028 is text, not a line break, and no control char
        "u2\x0bx,i2,1600000000",
        "u3,i\x1c3,1600000000",
        "u4,i\x854,1600000000",
        "u5,i\r5,1600000000",
        "u6,i6\x0c,1600000000",
        "u7,i7,1600000000\r",
    ]
    data = ("user,item,ts\n" + "\n".join(rows) + "\r\n").encode()
    if undecodable:
        data += b"u8,\xff,1600000000\n"
    path = _csv(tmp_path / "events.csv", data)
    batch = import_events(path, CsvColumns(user="user", item="item", time="ts"))
    assert batch.interactions["user_id"].tolist() == ["u1\u2028x", "u7"]
    bad = [(r.line, r.reason, r.raw) for r in batch.rejects]
    expected = [(n, "bad_id", rows[n - 2]) for n in range(3, 8)]
    if undecodable:
        expected.append((9, "encoding", "u8,\\xff,1600000000"))
    assert bad == expected
    assert batch.rows_read == len(rows) + undecodable


def test_read_split_keeps_a_lone_carriage_return_in_its_field(tmp_path: Path) -> None:
    path = _csv(tmp_path / "u.data", b"1\t10\t5\t88125\r0949\n2\t10\t4\t891717742\r\n")
    table = readers.read_split(path, "\t", 4)
    assert table.lines == [1, 2] and table.rows[0][3] == "88125\r0949"
    assert table.rows[1][3] == "891717742"


def test_csv_control_characters_reject_only_their_row(engine: Engine, tmp_path: Path) -> None:
    path = _csv(
        tmp_path / "events.csv",
        "user,item,ts,kind\n"
        "u1,i1,1600000000,view\n"
        "u\x002,i1,1600000000,view\n"
        "u3,i\x001,1600000000,view\n"
        "u4,i1,1600000000,vi\x00ew\n"
        "u5,i\x1f1,1600000000,view\n"
        f"u6,{'i' * 256},1600000000,view\n"
        f"u7,i1,1600000000,{'v' * 33}\n"
        "u8,i1,1600000000,view\n",
    )
    columns = CsvColumns(user="user", item="item", time="ts", event_type="kind")
    batch = import_events(path, columns)
    result = ingest(engine, batch, tmp_path / "rejects")
    assert (result.rows_inserted, result.rows_rejected) == (2, 6) and _sums_up(result)
    assert [(r.line, r.reason) for r in batch.rejects] == [(n, "bad_id") for n in range(3, 9)]
    assert stats(engine)["users"] == 2


def test_catalogue_files_reject_rows_the_store_cannot_hold(engine: Engine, tmp_path: Path) -> None:
    _csv(tmp_path / "e.csv", "user_id,item_id\nu1,i1\n")
    _csv(
        tmp_path / "items.csv",
        "item_id,title,genres,year,price,brand\n"
        "i1,Lego,Toys|Bricks,2020,19.99,ACME\n"
        "i2,Lo\x00go,,,,\n"
        "i\x0b3,Ok,,,,\n"
        "i4,Ok,Toys|Bri\x00cks,,,\n"
        "i5,Ok,,,,AC\x00ME\n"
        "i6,Ok,,1e12,,\n"
        "i7,Ok,,,inf,\n",
    )
    _csv(
        tmp_path / "users.csv",
        f"user_id,age,gender,zip_code\nu1,31,F,1000\nu2,,{'x' * 40},\nu3,,,10\x0001\n",
    )
    batch = import_events(
        tmp_path / "e.csv",
        CsvColumns(user="user_id", item="item_id"),
        items_path=tmp_path / "items.csv",
        users_path=tmp_path / "users.csv",
    )
    result = ingest(engine, batch, tmp_path / "rejects")
    assert (stats(engine)["items"], stats(engine)["users"]) == (1, 1)
    assert (result.rows_read, result.rows_inserted, result.rows_rejected) == (1, 1, 0)
    assert result.catalogue_rejected == 8 and result.rejects_path is not None
    with open(result.rejects_path, newline="", encoding="utf-8") as handle:
        report = [(r["file"], int(r["line"]), r["reason"]) for r in csv.DictReader(handle)]
    assert report == [
        ("items.csv", 3, "bad_text"),
        ("items.csv", 4, "bad_id"),
        ("items.csv", 5, "bad_text"),
        ("items.csv", 6, "bad_text"),
        ("items.csv", 7, "value_out_of_range"),
        ("items.csv", 8, "value_out_of_range"),
        ("users.csv", 3, "too_long"),
        ("users.csv", 4, "bad_text"),
    ]


def test_movielens_catalogue_row_with_nul_is_rejected_alone(engine: Engine, tmp_path: Path) -> None:
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text("1\t10\t5\t881250949\n1\t20\t3\t881250950\n")
    items = [f"10|Toy Story (1995)|01-Jan-1995||http://x/10|{_flags(3)}"]
    items.append(f"20|Heat\x00|15-Dec-1995||http://x/20|{_flags(1)}")
    (folder / "u.item").write_bytes("\n".join(items).encode("latin-1"))
    (folder / "u.user").write_text("1|24|M|technician|85711\n\x002|53|F|other|94043\n")
    batch = import_movielens(folder)
    result = ingest(engine, batch, tmp_path / "rejects")
    with engine.connect() as conn:
        titles = dict(conn.execute(select(items_table.c.external_id, items_table.c.title)).all())
    assert titles == {"10": "Toy Story (1995)", "20": None}
    assert stats(engine)["users"] == 1
    assert (result.rows_inserted, result.rows_rejected, result.catalogue_rejected) == (2, 0, 2)
    assert [(r.file, r.line, r.reason) for r in batch.catalogue_rejects] == [
        ("u.item", 2, "bad_text"),
        ("u.user", 2, "bad_id"),
    ]


def test_sequences_invalid_token_rejects_its_line(tmp_path: Path) -> None:
    text = f"u1 a b\nu2 a\x0bb c\nu3\ta\u2028b  c\nu4 a\x00\nu5 a {'x' * 256}\n"
    batch = import_sequences(_csv(tmp_path / "seq.txt", text))
    assert [(r.line, r.reason) for r in batch.rejects] == [(n, "bad_id") for n in (2, 4, 5)]
    assert batch.interactions["item_id"].tolist() == ["a", "b", "a\u2028b", "c"]
    assert batch.rows_read == 7


def test_gzip_file_is_read_and_a_truncated_one_is_a_clear_error(tmp_path: Path) -> None:
    text = "user\titem\n" + "".join(f"u{i}\ti{i}\n" for i in range(2000))
    whole = _csv(tmp_path / "events.tsv.gz", gzip.compress(text.encode()))
    batch = import_events(whole, CsvColumns(user="user", item="item"))
    assert len(batch.interactions) == 2000 and batch.rows_read == 2000
    cut = _csv(tmp_path / "cut.csv.gz", whole.read_bytes()[:-40])
    with pytest.raises(DataFileError, match="truncated or corrupt"):
        import_events(cut, CsvColumns(user="user", item="item"))
    with pytest.raises(DataFileError, match="truncated or corrupt"):
        import_sequences(_csv(tmp_path / "seq.txt.gz", whole.read_bytes()[:30]))
    with pytest.raises(DataFileError, match="truncated or corrupt"):
        import_sequences(_csv(tmp_path / "empty.gz", b""))


def test_csv_duplicates_within_a_file_and_on_reimport_are_already_stored(
    engine: Engine, tmp_path: Path
) -> None:
    rows = ["u1,i1,1600000000", "u1,i2,1600000001", "u1,i1,1600000000", "u2,i1,1600000000"]
    path = _csv(tmp_path / "events.csv", "user,item,ts\n" + "\n".join([*rows, rows[1]]) + "\n")
    columns = CsvColumns(user="user", item="item", time="ts")
    first = ingest(engine, import_events(path, columns), tmp_path / "rejects")
    assert (first.rows_read, first.rows_inserted, first.rows_skipped) == (5, 3, 2)
    again = ingest(engine, import_events(path, columns), tmp_path / "rejects")
    assert (again.rows_read, again.rows_inserted, again.rows_skipped) == (5, 0, 5)
    assert _sums_up(first) and _sums_up(again)


def test_write_rejects_holds_any_raw_text(tmp_path: Path) -> None:
    raws = ["a\x00b", 'q"uote', "crlf\r\nin", "lone\rcr", "sep\u2028x", "half\ud800"]
    batch = ImportBatch(
        kind="csv",
        source="e.csv",
        rejects=[Reject("e.csv", n, "malformed_csv", raw) for n, raw in enumerate(raws, 2)],
    )
    path = write_rejects(batch, tmp_path)
    assert path is not None
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["raw"] for r in rows] == [*raws[:-1], "half\\ud800"]
    assert [r["line"] for r in rows] == ["2", "3", "4", "5", "6", "7"]


def test_physical_lines_agree_whether_or_not_the_file_decodes(tmp_path: Path) -> None:
    body = b"a\r\r\nb\rc\r\n\r\nd\x0be\r"
    clean = readers.physical_lines(_csv(tmp_path / "clean.txt", body))
    mixed = readers.physical_lines(_csv(tmp_path / "mixed.txt", b"\xff\n" + body))
    assert clean == (["a\r", "b\rc", "", "d\x0be\r"], [])
    assert mixed[0] == [None, *clean[0]]
    assert [(r.line, r.reason, r.raw) for r in mixed[1]] == [(1, "encoding", "\\xff")]
