"""Chunks never split rows that share a watermark value, so a chunk's end is a safe resume point."""

from __future__ import annotations

import itertools
from pathlib import Path

import sqlalchemy as sa

from recsys.sources.config import parse_source
from recsys.sources.reader import RAMP_FROM_ROWS, fetch_sizes, read_chunks, source_engine


def test_reader_chunks_keep_equal_watermarks_together(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'clicks.db'}"
    engine = sa.create_engine(url)
    stamps = [1, 1, 1, 2, 3, 3, 3, 3, 4, 5]
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE clicks (uid TEXT, sku TEXT, at INTEGER)"))
        conn.execute(
            sa.text("INSERT INTO clicks VALUES (:u, 'a', :t)"),
            [{"u": f"u{i}", "t": t} for i, t in enumerate(stamps)],
        )
    engine.dispose()
    source = parse_source(
        "clicks",
        {
            "url": url,
            "table": "clicks",
            "watermark": "at",
            "chunk_rows": 2,
            "events": {"user": "uid", "item": "sku", "time": "at"},
        },
    )
    reader = source_engine(source)
    with reader.connect() as conn:
        chunks = list(read_chunks(source, conn, None))
        later = [r[2] for c in read_chunks(source, conn, 3) for r in c.rows]
    reader.dispose()
    seen = [r[2] for c in chunks for r in c.rows]
    assert seen == stamps
    ends = [c.last_watermark for c in chunks]
    for chunk, following in itertools.pairwise(chunks):
        assert following.rows[0][2] != chunk.last_watermark
    assert ends == sorted(ends) and ends[-1] == 5
    assert [c.first_row for c in chunks] == [
        1 + sum(len(c.rows) for c in chunks[:i]) for i in range(len(chunks))
    ]
    assert later == [4, 5]


def test_a_large_chunk_size_starts_small_and_doubles() -> None:
    assert list(itertools.islice(fetch_sizes(100_000), 6)) == [
        12_500,
        25_000,
        50_000,
        100_000,
        100_000,
        100_000,
    ]
    assert list(itertools.islice(fetch_sizes(30_000), 3)) == [10_000, 20_000, 30_000]
    assert list(itertools.islice(fetch_sizes(RAMP_FROM_ROWS), 2)) == [RAMP_FROM_ROWS] * 2
    assert list(itertools.islice(fetch_sizes(4), 2)) == [4, 4]


def test_ramped_chunks_read_every_row_once_in_order(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'clicks.db'}"
    engine = sa.create_engine(url)
    rows = 50_000
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE clicks (uid TEXT, sku TEXT, at INTEGER)"))
        conn.execute(
            sa.text("INSERT INTO clicks VALUES (:u, 'a', :t)"),
            [{"u": f"u{i}", "t": i // 3} for i in range(rows)],
        )
    engine.dispose()
    body = {"url": url, "table": "clicks", "watermark": "at", "chunk_rows": 24_000}
    source = parse_source("clicks", body | {"events": {"user": "uid", "item": "sku", "time": "at"}})
    reader = source_engine(source)
    with reader.connect() as conn:
        chunks = list(read_chunks(source, conn, None))
    reader.dispose()
    # 10,000, 20,000 then 24,000 rows asked for (20,000 left); a chunk ends before the group
    # of equal times that a fetch cut, which goes with the next chunk.
    assert [len(c.rows) for c in chunks] == [9_999, 19_998, 20_003]
    assert [r[2] for c in chunks for r in c.rows] == [i // 3 for i in range(rows)]
