"""Database sources as configuration: a TOML file (or a folder of them) parsed into typed models.

A file holds ``[sources.NAME]`` tables; in a folder, each ``NAME.toml`` holds one source's
keys at its top level. A source names a database (a SQLAlchemy URL in which ``${VAR}`` is
read from the environment when it connects, so the secret is never stored or shown), a table
or a SELECT, an optional watermark column, and how its columns map to events, items or users.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from recsys.errors import RecsysError
from recsys.ids import event_type_problem

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
# Bare dialect names use the driver the extras install (SQLAlchemy would pick others).
DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg",
           "mysql": "mysql+pymysql", "mariadb": "mariadb+pymysql"}  # fmt: skip


class SourceConfigError(RecsysError):
    """The sources file is missing, not TOML, or declares a source that cannot be used."""


class SourceError(RecsysError):
    """A source failed against its database: unreachable, a missing column, a bad query.

    ``transient`` is true when the driver reported what may pass on its own (a refused or
    dropped connection, a busy database), so trying again later may succeed.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def hide_password(url: str) -> str:
    """The URL as it may be shown: the password (even a ``${VAR}`` reference) as ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable URL>"


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EventColumns(_Closed):
    """Which columns make an event; ``event_type`` is a constant unless ``event_type_column``."""

    user: str
    item: str
    time: str
    event_type: str = "interaction"
    event_type_column: str | None = None
    value: str | None = None
    time_zone: str = "UTC"
    time_unit: Literal["auto", "s", "ms"] = "auto"

    @field_validator("event_type")
    @classmethod
    def _event_type(cls, value: str) -> str:
        problem = event_type_problem(value)
        if problem is not None:
            raise ValueError(f"event type {value!r} {problem}")
        return value

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    def used(self) -> dict[str, str]:
        named = {
            "user": self.user,
            "item": self.item,
            "time": self.time,
            "event_type_column": self.event_type_column,
            "value": self.value,
        }
        return {k: v for k, v in named.items() if v is not None}


class ItemColumns(_Closed):
    """Which columns describe an item; ``attributes`` are kept as free-form attributes.

    An item read from its source is available unless ``available`` says false or ``deleted``
    holds anything but null or false (a flag, or a ``deleted_at`` time). ``absent`` says
    what becomes of an item this source described before and no longer returns:
    ``unavailable`` (the default when every sync reads every row, i.e. without a watermark)
    or ``keep`` (the only choice with a watermark, which reads changed rows only).
    """

    id: str
    title: str | None = None
    genres: str | None = None
    genres_separator: str = "|"
    year: str | None = None
    price: str | None = None
    available: str | None = None
    deleted: str | None = None
    absent: Literal["unavailable", "keep"] | None = None
    attributes: tuple[str, ...] = ()

    def used(self) -> dict[str, str]:
        named = {
            "id": self.id,
            "title": self.title,
            "genres": self.genres,
            "year": self.year,
            "price": self.price,
            "available": self.available,
            "deleted": self.deleted,
        }
        found = {k: v for k, v in named.items() if v is not None}
        return found | {f"attributes.{c}": c for c in self.attributes}


class UserColumns(_Closed):
    """Which columns describe a user; ``attributes`` are kept as free-form attributes."""

    id: str
    age: str | None = None
    gender: str | None = None
    occupation: str | None = None
    zip_code: str | None = None
    attributes: tuple[str, ...] = ()

    def used(self) -> dict[str, str]:
        named = {
            "id": self.id,
            "age": self.age,
            "gender": self.gender,
            "occupation": self.occupation,
            "zip_code": self.zip_code,
        }
        found = {k: v for k, v in named.items() if v is not None}
        return found | {f"attributes.{c}": c for c in self.attributes}


class SourceConfig(_Closed):
    """One source: where its rows are, how far a sync reads, and what they become.

    Exactly one of ``table`` and ``query``; exactly one of ``events``, ``items`` and
    ``users``. Rows are read where ``watermark > stored - lookback`` (``lookback`` in seconds
    when the watermark is a time, else in the column's units); without a watermark every sync
    reads every row (and stores nothing twice).
    """

    name: str
    url: str
    table: str | None = None
    query: str | None = None
    watermark: str | None = None
    lookback: Annotated[float, Field(ge=0)] = 0
    chunk_rows: Annotated[int, Field(ge=1)] = 100_000
    sample_rows: Annotated[int, Field(ge=1)] = 1_000
    events: EventColumns | None = None
    items: ItemColumns | None = None
    users: UserColumns | None = None

    @model_validator(mode="after")
    def _one_of_each(self) -> SourceConfig:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of table and query")
        kinds = [k for k in ("events", "items", "users") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of [events], [items] and [users]")
        if self.items is not None and self.watermark and self.items.absent == "unavailable":
            raise ValueError(
                "items.absent = 'unavailable' needs every row read at each sync: drop the "
                "watermark, or mark deletions with items.deleted"
            )
        if not _VARIABLE.search(self.url):
            try:
                make_url(self.url)
            except ArgumentError:
                raise ValueError(
                    "url is not a SQLAlchemy URL (dialect+driver://user:password@host/db)"
                ) from None
        return self

    def __repr__(self) -> str:
        return (
            f"SourceConfig(name={self.name!r}, url={hide_password(self.url)!r}, kind={self.kind!r})"
        )

    __str__ = __repr__

    @property
    def kind(self) -> str:
        return "events" if self.events else "items" if self.items else "users"

    @property
    def mapping(self) -> EventColumns | ItemColumns | UserColumns:
        found = self.events or self.items or self.users
        assert found is not None
        return found

    @property
    def withdraws_absent(self) -> bool:
        """Whether a sync marks unavailable the items this source no longer returns."""
        if self.items is None or self.watermark is not None:
            return False
        return self.items.absent != "keep"

    @property
    def shown_url(self) -> str:
        return hide_password(self.url)

    def columns(self) -> dict[str, str]:
        """Every column the source reads, by what it is used for."""
        used = self.mapping.used()
        return used | ({"watermark": self.watermark} if self.watermark else {})

    def connect_url(self, env: Mapping[str, str] | None = None) -> str:
        """The URL with ``${VAR}`` read from ``env`` (the process environment by default).

        A variable may be the whole URL, or stand in its user, password, host, database or a
        query value (taken as it is: a password needs no escaping).
        """
        env = os.environ if env is None else env

        def value(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in env:
                raise SourceConfigError(
                    f"source {self.name}: the url needs the environment variable {name}, "
                    "which is not set"
                )
            return env[name]

        def fill(text: str | None) -> str | None:
            return None if text is None else _VARIABLE.sub(value, text)

        whole = _VARIABLE.fullmatch(self.url.strip())
        try:
            if whole is not None:
                url = make_url(value(whole))
            else:
                template = make_url(self.url)
                url = template.set(
                    username=fill(template.username),
                    password=fill(template.password),
                    host=fill(template.host),
                    database=fill(template.database),
                    query={
                        k: _VARIABLE.sub(value, v) if isinstance(v, str) else v
                        for k, v in template.query.items()
                    },
                )
        except ArgumentError:
            raise SourceConfigError(f"source {self.name}: url is not a SQLAlchemy URL") from None
        driver = DRIVERS.get(url.drivername)
        if driver is not None:
            url = url.set(drivername=driver)
        return url.render_as_string(hide_password=False)


def load_sources(path: Path) -> dict[str, SourceConfig]:
    """The sources declared in ``path`` (a TOML file or a folder of them), by name."""
    if path.is_dir():
        raw = {p.stem: _read_toml(p) for p in sorted(path.glob("*.toml"))}
        if not raw:
            raise SourceConfigError(f"{path}: no *.toml source files in this folder")
    elif path.is_file():
        document = _read_toml(path)
        unknown = sorted(set(document) - {"sources"})
        if unknown:
            raise SourceConfigError(f"{path.name}: unknown top-level keys {', '.join(unknown)}")
        raw = document.get("sources", {})
        if not isinstance(raw, dict) or not raw:
            raise SourceConfigError(f"{path.name}: no [sources.NAME] table")
    else:
        raise SourceConfigError(
            f"no sources file at {path} (set RECSYS_SOURCES_FILE or create recsys.toml)"
        )
    return {name: parse_source(name, body) for name, body in raw.items()}


def parse_source(name: str, body: Any) -> SourceConfig:
    """One source from its TOML table; a problem is one line naming the source and the key."""
    if not _NAME.match(name):
        raise SourceConfigError(
            f"source {name!r}: a name has 1-128 letters, digits, '_', '-' or '.'"
        )
    if not isinstance(body, dict):
        raise SourceConfigError(f"source {name}: expected a table of keys")
    try:
        return SourceConfig(name=name, **{k: v for k, v in body.items() if k != "name"})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        raise SourceConfigError(
            f"source {name}: {where + ': ' if where else ''}{message}"
        ) from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise SourceConfigError(f"{path.name}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise SourceConfigError(f"cannot read {path}: {exc.strerror}") from None
