"""Property: every physical record of an imported file is loaded, already stored or rejected.

Valid event CSVs, sequence files and MovieLens ``u.data`` files are corrupted at random and
ingested into a fresh database, twice; the counts must add up, every non-empty line must
belong to exactly one record, and each reject must carry the text of the lines it names.
"""

from __future__ import annotations

import itertools
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from recsys.data.frames import ImportBatch, Reject
from recsys.data.importers import CsvColumns, import_events, import_movielens, import_sequences
from recsys.data.ingest import ingest
from recsys.data.load import LoadResult
from recsys.data.readers import Table, decode_lines, read_csv_table, read_split
from recsys.db.engine import create_engine
from recsys.db.migrate import upgrade

SETTINGS = settings(
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
INLINE = ["\u2028", "\u2029", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\r", "\t", "\xa0"]
INSERTS = ['"', ",", "\t", " ", "\x00", "::", *INLINE]
BAD_BYTES = [b"\xff", b"\xc3", b"\xe2\x80", b"\xed\xa0\x80", b"\x80"]
TABLES = "interactions, users, items, imports"

Fresh = Callable[[], Engine]


@dataclass(frozen=True)
class Corruption:
    kind: str
    row: int
    at: int
    pick: int


CORRUPTIONS = st.builds(
    Corruption,
    kind=st.sampled_from(
        ["insert", "bad_bytes", "drop_field", "add_field", "duplicate", "empty_line", "unquote"]
    ),
    row=st.integers(0, 10_000),
    at=st.integers(0, 10_000),
    pick=st.integers(0, 10_000),
)


@st.composite
def files(draw: st.DrawFn, render: Callable[[st.DrawFn], str], header: str | None) -> bytes:
    """A valid file of records from ``render``, then corrupted: bytes, lines and line endings."""
    rows = [render(draw).encode() for _ in range(draw(st.integers(0, 90)))]
    for c in draw(st.lists(CORRUPTIONS, max_size=8)):
        if not rows:
            break
        i = c.row % len(rows)
        row = rows[i]
        at = c.at % (len(row) + 1)
        if c.kind == "insert":
            rows[i] = row[:at] + INSERTS[c.pick % len(INSERTS)].encode() + row[at:]
        elif c.kind == "bad_bytes":
            rows[i] = row[:at] + BAD_BYTES[c.pick % len(BAD_BYTES)] + row[at:]
        elif c.kind == "drop_field":
            rows[i] = re.sub(rb"[,\t ][^,\t ]*$", b"", row)
        elif c.kind == "add_field":
            rows[i] = row + [b",x", b"\tx", b" x"][c.pick % 3]
        elif c.kind == "duplicate":
            rows.insert(i, row)
        elif c.kind == "empty_line":
            rows.insert(i, b"")
        else:
            rows[i] = row[:at] + b'"' + row[at:].replace(b'"', b"", 1)
    endings = draw(st.lists(st.sampled_from([b"\n", b"\r\n"]), min_size=len(rows) + 1))
    head = b"" if header is None else header.encode() + endings[-1]
    body = b"".join(row + end for row, end in zip(rows, endings, strict=False))
    if body and draw(st.booleans()):
        body = body[: draw(st.integers(0, len(body) - 1))]
    return head + body


def _quoted(field: str) -> str:
    if any(c in field for c in ',"\n\r') or field.startswith(" "):
        return '"' + field.replace('"', '""') + '"'
    return field


USER_IDS = ["u1", "u2", "u3", "\u00fc4", "u 5"]
ITEM_IDS = ["i1", "i2", "i3", "i4", "i,5", 'i"6', "\u00e97", "i 8", "i\n9"]
NOTES = ["", "ok", "a,b", 'say "hi"', "two\nlines", "x\r\ny", " lead"]
SECONDS = st.integers(1_500_000_000, 1_700_000_000)


def _event_row(draw: st.DrawFn) -> str:
    user, item = draw(st.sampled_from(USER_IDS)), draw(st.sampled_from(ITEM_IDS))
    note = draw(st.sampled_from(NOTES))
    return ",".join([_quoted(user), _quoted(item), str(draw(SECONDS)), _quoted(note)])


def _rating_row(draw: st.DrawFn) -> str:
    fields = [
        str(draw(st.integers(1, 9))),
        str(draw(st.integers(1, 30))),
        str(draw(st.integers(1, 5))),
        str(draw(SECONDS)),
    ]
    return "\t".join(fields)


def _sequence_row(draw: st.DrawFn) -> str:
    tokens = draw(
        st.lists(st.sampled_from(["a", "b", "c", "\u00e9d", "e"]), min_size=1, max_size=6)
    )
    gap = draw(st.sampled_from([" ", "\t", "  "]))
    return gap.join([draw(st.sampled_from(["u1", "u2", "u3"])), *tokens])


def _physical(data: bytes) -> list[str]:
    """The file's lines as the import must number them: only LF and CRLF end a line."""
    *ended, last = data.split(b"\n")
    lines = [line[:-1] if line.endswith(b"\r") else line for line in ended]
    if last:
        lines.append(last)
    return [line.decode("utf-8", errors="backslashreplace") for line in lines]


def _span(line: int, raw: str) -> range:
    return range(line, line + raw.count("\n") + 1)


def _assert_rejects_name_their_lines(rejects: list[Reject], lines: list[str]) -> None:
    for r in rejects:
        assert r.raw == "\n".join(lines[n - 1] for n in _span(r.line, r.raw)), r
    assert len({r.line for r in rejects}) == len(rejects)


def _assert_every_line_is_one_record(table: Table, lines: list[str], first: int) -> None:
    """Each non-empty line from ``first`` on lies in exactly one kept row or reject."""
    spans = [_span(n, raw) for n, raw in zip(table.lines, table.raw, strict=True)]
    spans += [_span(r.line, r.raw) for r in table.rejects]
    covered = sorted(itertools.chain.from_iterable(spans))
    wanted = [n for n in range(first, len(lines) + 1) if lines[n - 1] != ""]
    assert covered == wanted
    assert table.lines_read == len(table.rows) + len(table.rejects)


def _assert_sums(result: LoadResult) -> None:
    assert result.rows_read == result.rows_inserted + result.rows_skipped + result.rows_rejected


def _ingest_twice(engine: Engine, batch: ImportBatch, folder: Path) -> None:
    assert batch.rows_read == len(batch.interactions) + len(batch.rejects)
    first = ingest(engine, batch, folder)
    _assert_sums(first)
    again = ingest(engine, batch, folder)
    _assert_sums(again)
    assert (again.rows_inserted, again.rows_skipped) == (0, len(batch.interactions))
    keys = batch.interactions[["user_id", "item_id", "event_type", "occurred_at"]]
    assert first.rows_inserted == len(keys.drop_duplicates())


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def fresh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fresh]:
    """A callable that empties a migrated database for each example and returns its engine."""
    engines: list[Engine] = []
    if request.param == "sqlite":
        template = tmp_path / "template.db"
        migrated = create_engine(f"sqlite:///{template}")
        upgrade(migrated)
        migrated.dispose()  # closing checkpoints the WAL into the file the examples copy
        counter = itertools.count()

        def fresh_sqlite() -> Engine:
            for engine in engines:
                engine.dispose()
            path = tmp_path / f"example-{next(counter)}.db"
            shutil.copyfile(template, path)
            engines[:] = [create_engine(f"sqlite:///{path}")]
            return engines[0]

        yield fresh_sqlite
    else:
        url = request.getfixturevalue("fresh_postgres_url")
        upgrade(create_engine(url))
        engines.append(create_engine(url))

        def fresh_postgres() -> Engine:
            with engines[0].begin() as conn:
                conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY"))
            return engines[0]

        yield fresh_postgres
    for engine in engines:
        engine.dispose()


@SETTINGS
@given(data=files(_event_row, "user,item,ts,note"))
@pytest.mark.slow
def test_ingest_events_csv_accounts_for_every_record(
    fresh: Fresh, tmp_path: Path, data: bytes
) -> None:
    path = tmp_path / "events.csv"
    path.write_bytes(data)
    lines = _physical(data)
    _assert_every_line_is_one_record(read_csv_table(path), lines, first=2)
    batch = import_events(path, CsvColumns(user="user", item="item", time="ts"))
    _assert_rejects_name_their_lines(batch.rejects, lines)
    _ingest_twice(fresh(), batch, tmp_path / "rejects")


@SETTINGS
@given(data=files(_rating_row, None))
@pytest.mark.slow
def test_ingest_movielens_u_data_accounts_for_every_record(
    fresh: Fresh, tmp_path: Path, data: bytes
) -> None:
    folder = tmp_path / "ml-100k"
    folder.mkdir(exist_ok=True)
    (folder / "u.data").write_bytes(data)
    lines = _physical(data)
    _assert_every_line_is_one_record(read_split(folder / "u.data", "\t", 4), lines, first=1)
    batch = import_movielens(folder)
    _assert_rejects_name_their_lines(batch.rejects, lines)
    _ingest_twice(fresh(), batch, tmp_path / "rejects")


@SETTINGS
@given(data=files(_sequence_row, None))
@pytest.mark.slow
def test_ingest_sequences_accounts_for_every_line(
    fresh: Fresh, tmp_path: Path, data: bytes
) -> None:
    path = tmp_path / "seq.txt"
    path.write_bytes(data)
    lines = _physical(data)
    batch = import_sequences(path)
    _assert_rejects_name_their_lines(batch.rejects, lines)
    decoded, _ = decode_lines(path)
    rejected = {r.line for r in batch.rejects}
    assert rejected <= {n for n, line in enumerate(lines, start=1) if line}
    kept = [line for n, line in decoded if n not in rejected]
    events = sum(len(re.split("[ \t]+", line.strip(" \t"))) - 1 for line in kept)
    assert len(batch.interactions) == events
    _ingest_twice(fresh(), batch, tmp_path / "rejects")
