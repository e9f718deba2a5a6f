"""Sources files: what they declare, and one-line errors that name the source."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.sources.config import SourceConfigError, load_sources, parse_source
from recsys.sources.sync import select_sources

EVENTS = {
    "url": "postgresql://shop:${SHOP_PASSWORD}@db.internal/shop",
    "table": "page_views",
    "events": {"user": "customer_id", "item": "sku", "time": "viewed_at"},
}


def _error(name: str, body: dict[str, object]) -> str:
    with pytest.raises(SourceConfigError) as caught:
        parse_source(name, body)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_config_reads_a_file_and_a_folder_of_files(tmp_path: Path) -> None:
    file = tmp_path / "recsys.toml"
    file.write_text(
        '[sources.views]\nurl = "sqlite:///shop.db"\ntable = "page_views"\nwatermark = "id"\n'
        '[sources.views.events]\nuser = "customer_id"\nitem = "sku"\ntime = "viewed_at"\n'
    )
    (source,) = load_sources(file).values()
    assert (source.name, source.kind, source.watermark) == ("views", "events", "id")
    assert source.columns()["watermark"] == "id"

    folder = tmp_path / "sources"
    folder.mkdir()
    (folder / "products.toml").write_text(
        'url = "sqlite:///shop.db"\ntable = "products"\n'
        '[items]\nid = "sku"\navailable = "in_stock"\nattributes = ["brand"]\n'
    )
    (products,) = load_sources(folder).values()
    assert products.name == "products" and products.kind == "items"
    assert products.columns() == {"id": "sku", "available": "in_stock", "attributes.brand": "brand"}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"query": "SELECT 1"}, "source views: give exactly one of table and query"),
        ({"items": {"id": "sku"}}, "source views: give exactly one of [events], [items]"),
        ({"colour": "red"}, "source views: colour: unknown key"),
        ({"lookback": -1}, "source views: lookback: "),
        ({"events": {"user": "u", "item": "i"}}, "source views: events.time: "),
        (
            {"events": {"user": "u", "item": "i", "time": "t", "time_zone": "Mars/Base"}},
            "source views: events.time_zone: unknown time zone 'Mars/Base'",
        ),
        ({"url": "not a url"}, "source views: url is not a SQLAlchemy URL"),
        (
            {"events": {"user": "u", "item": "i", "time": "t", "event_type": ""}},
            "source views: events.event_type: event type '' ",
        ),
    ],
)
def test_config_errors_are_one_line_naming_the_source(
    change: dict[str, object], expected: str
) -> None:
    assert _error("views", EVENTS | change).startswith(expected)


def test_config_file_errors_are_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "recsys.toml"
    broken.write_text("[sources.views\n")
    missing = tmp_path / "absent.toml"
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    for path, expected in (
        (broken, "recsys.toml: not valid TOML"),
        (missing, "no sources file at"),
        (empty, "empty.toml: no [sources.NAME] table"),
    ):
        with pytest.raises(SourceConfigError, match="^" + expected.replace("[", r"\[")):
            load_sources(path)
    assert _error("bad name!", EVENTS).startswith("source 'bad name!': a name has")


def test_config_secret_is_read_at_connect_time_and_never_shown() -> None:
    source = parse_source("views", EVENTS | {"url": "postgresql://shop:s3cret@db/shop"})
    assert "s3cret" not in repr(source) and "s3cret" not in source.shown_url
    assert "***" in source.shown_url

    source = parse_source("views", EVENTS)
    assert source.connect_url({"SHOP_PASSWORD": "p@ss"}) == (
        "postgresql+psycopg://shop:p%40ss@db.internal/shop"
    )
    assert "p@ss" not in repr(source) and "SHOP_PASSWORD" not in source.shown_url
    with pytest.raises(SourceConfigError, match=r"^source views: .*SHOP_PASSWORD, which is not"):
        source.connect_url({})

    mysql = parse_source("orders", EVENTS | {"url": "mysql://shop@db/shop"})
    assert mysql.connect_url({}).startswith("mysql+pymysql://")
    whole = parse_source("orders", EVENTS | {"url": "${SHOP_URL}"})
    assert whole.connect_url({"SHOP_URL": "sqlite:///shop.db"}) == "sqlite:///shop.db"


def test_config_unknown_source_name_lists_the_known_ones() -> None:
    sources = {"views": parse_source("views", EVENTS)}
    assert select_sources(sources) == list(sources.values())
    with pytest.raises(SourceConfigError, match=r"^no source named 'clicks'; sources are views$"):
        select_sources(sources, "clicks")


def test_config_the_readme_example_parses(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "recsys.toml").write_text(block)
    sources = load_sources(tmp_path / "recsys.toml")
    assert [s.kind for s in sources.values()] == ["events", "events", "items", "users"]
    url = sources["purchases"].connect_url({"SHOP_DB_PASSWORD": "x"})
    assert url.startswith("mysql+pymysql://shop:x@")
