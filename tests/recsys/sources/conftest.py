"""The shop: one e-commerce-like schema (customers, products with a stock flag, orders with
order items, page views) created on SQLite, PostgreSQL and MariaDB/MySQL, and a sources file
that reads it, one source through a SELECT joining two tables.

MariaDB/MySQL tests need ``RECSYS_TEST_MYSQL_URL`` (a server where the user may create
databases) and the ``pymysql`` driver; without either they skip with a reason, except under CI
(``CI`` set), where they fail.
"""

from __future__ import annotations

import os
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

MYSQL_ENV = "RECSYS_TEST_MYSQL_URL"
SOURCE_BACKENDS = ["sqlite", "postgresql", "mariadb"]

shop = sa.MetaData()
customers = sa.Table(
    "customers",
    shop,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("email", sa.String(255)),
    sa.Column("country", sa.String(2)),
    sa.Column("segment", sa.String(32)),
    sa.Column("birth_year", sa.Integer),
)
products = sa.Table(
    "products",
    shop,
    sa.Column("sku", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(255)),
    sa.Column("category", sa.String(255)),
    sa.Column("price", sa.Numeric(10, 2)),
    sa.Column("launched", sa.Integer),
    sa.Column("in_stock", sa.Boolean),
    sa.Column("brand", sa.String(64)),
)
orders = sa.Table(
    "orders",
    shop,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("customer_id", sa.Integer),
    sa.Column("ordered_at", sa.DateTime),
    sa.Column("status", sa.String(16)),
)
order_items = sa.Table(
    "order_items",
    shop,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("order_id", sa.Integer),
    sa.Column("sku", sa.String(32)),
    sa.Column("quantity", sa.Integer),
)
page_views = sa.Table(
    "page_views",
    shop,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("customer_id", sa.Integer),
    sa.Column("sku", sa.String(32)),
    sa.Column("viewed_at", sa.DateTime),
)

CUSTOMERS = [
    {
        "id": i,
        "email": f"c{i}@shop.test",
        "country": "DE",
        "segment": "retail",
        "birth_year": 1980 + i,
    }
    for i in range(1, 6)
]
PRODUCTS = [
    {"sku": "sku-1", "name": "Runner", "category": "shoes|sport", "price": 89.9, "launched": 2021,
     "in_stock": True, "brand": "Fast"},
    {"sku": "sku-2", "name": "Walker", "category": "shoes", "price": 59.0, "launched": 2019,
     "in_stock": False, "brand": "Slow"},
    {"sku": "sku-3", "name": "Sock", "category": "socks", "price": 4.5, "launched": None,
     "in_stock": True, "brand": None},
    {"sku": "sku-4", "name": "Cap", "category": None, "price": None, "launched": 2024,
     "in_stock": None, "brand": "Fast"},
    {"sku": "bad\x01sku", "name": "Broken", "category": "x", "price": 1.0, "launched": 2020,
     "in_stock": True, "brand": "X"},
]  # fmt: skip
# Order times are local (Europe/Berlin, no offset in the column).
ORDERS = [
    {"id": 1, "customer_id": 1, "ordered_at": datetime(2026, 1, 5, 10, 0), "status": "paid"},
    {"id": 2, "customer_id": 2, "ordered_at": datetime(2026, 1, 6, 11, 0), "status": "paid"},
    {"id": 3, "customer_id": 3, "ordered_at": datetime(2026, 1, 7, 12, 0), "status": "paid"},
    {"id": 4, "customer_id": 1, "ordered_at": datetime(2999, 1, 1, 0, 0), "status": "paid"},
    {"id": 5, "customer_id": 4, "ordered_at": datetime(2026, 1, 9, 9, 30), "status": "paid"},
]
ORDER_ITEMS = [
    {"id": 1, "order_id": 1, "sku": "sku-1", "quantity": 1},
    {"id": 2, "order_id": 1, "sku": "sku-3", "quantity": 3},
    {"id": 3, "order_id": 2, "sku": "sku-2", "quantity": 1},
    {"id": 4, "order_id": 2, "sku": None, "quantity": 1},
    {"id": 5, "order_id": 3, "sku": "sku-1", "quantity": 2},
    {"id": 6, "order_id": 4, "sku": "sku-2", "quantity": 1},
    {"id": 7, "order_id": 5, "sku": "sku-3", "quantity": 5},
    {"id": 8, "order_id": 5, "sku": "sku-4", "quantity": 1},
]
PAGE_VIEWS = [
    {"id": i, "customer_id": 1 + i % 5, "sku": f"sku-{1 + i % 4}",
     "viewed_at": datetime(2026, 1, 1, 8 + i, 0)}
    for i in range(1, 11)
]  # fmt: skip
# Purchases: 8 order items, of which one has no sku and one is dated in the far future.
PURCHASES_STORED = 6

SOURCES_TOML = """
[sources.purchases]
url = "{url}"
query = '''
    SELECT oi.id AS line_id, o.customer_id, oi.sku, oi.quantity, o.ordered_at
    FROM order_items oi JOIN orders o ON o.id = oi.order_id
'''
watermark = "line_id"
chunk_rows = 3

[sources.purchases.events]
user = "customer_id"
item = "sku"
time = "ordered_at"
time_zone = "Europe/Berlin"
event_type = "purchase"
value = "quantity"

[sources.views]
url = "{url}"
table = "page_views"
watermark = "viewed_at"
lookback = 3600
chunk_rows = 4

[sources.views.events]
user = "customer_id"
item = "sku"
time = "viewed_at"
event_type = "view"

[sources.products]
url = "{url}"
table = "products"

[sources.products.items]
id = "sku"
title = "name"
genres = "category"
year = "launched"
price = "price"
available = "in_stock"
attributes = ["brand"]

[sources.customers]
url = "{url}"
table = "customers"

[sources.customers.users]
id = "id"
attributes = ["country", "segment", "birth_year"]
"""


@dataclass(frozen=True)
class Shop:
    """A filled shop database, its URL, and a sources file that reads it."""

    backend: str
    url: str
    engine: sa.Engine
    sources_file: Path

    def insert(self, table: sa.Table, rows: list[dict[str, Any]]) -> None:
        with self.engine.begin() as conn:
            conn.execute(table.insert(), rows)


def fill(engine: sa.Engine) -> None:
    shop.create_all(engine)
    with engine.begin() as conn:
        for table, rows in (
            (customers, CUSTOMERS),
            (products, PRODUCTS),
            (orders, ORDERS),
            (order_items, ORDER_ITEMS),
            (page_views, PAGE_VIEWS),
        ):
            conn.execute(table.insert(), rows)


def write_sources(path: Path, url: str, extra: str = "") -> Path:
    path.write_text(textwrap.dedent(SOURCES_TOML).replace("{url}", url) + extra)
    return path


def _skip_or_fail(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def mysql_server() -> str:
    url = os.environ.get(MYSQL_ENV)
    if not url:
        _skip_or_fail(f"{MYSQL_ENV} not set: MariaDB/MySQL-backed tests need a server")
    assert url is not None
    try:
        import pymysql  # noqa: F401
    except ImportError:
        _skip_or_fail("pymysql is not installed: MariaDB/MySQL tests need recsys[mysql]")
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as exc:
        _skip_or_fail(f"MariaDB/MySQL at {MYSQL_ENV} is unreachable: {exc.orig}".splitlines()[0])
    finally:
        engine.dispose()
    return url


@pytest.fixture
def fresh_mysql_url(mysql_server: str) -> Iterator[str]:
    """A new, empty MariaDB/MySQL database for one test, dropped afterwards."""
    name = f"recsys_t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(mysql_server, poolclass=NullPool)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE `{name}`"))
    yield make_url(mysql_server).set(database=name).render_as_string(hide_password=False)
    with admin.begin() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
    admin.dispose()


@pytest.fixture(params=SOURCE_BACKENDS)
def shop_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Shop]:
    """The shop on each backend, with a sources file reading all four sources."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'shop.db'}"
    elif request.param == "postgresql":
        url = str(request.getfixturevalue("fresh_postgres_url"))
    else:
        url = str(request.getfixturevalue("fresh_mysql_url"))
    engine = sa.create_engine(url, poolclass=NullPool)
    fill(engine)
    yield Shop(request.param, url, engine, write_sources(tmp_path / "recsys.toml", url))
    engine.dispose()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[sa.Engine]:
    """A migrated embedded store (SQLite)."""
    from recsys.db.engine import create_engine
    from recsys.db.migrate import upgrade

    engine = create_engine(f"sqlite:///{tmp_path / 'store' / 'recsys.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()
