"""What every command shares: the ``--json``/``--strict`` options, one-line user errors,
tables or one JSON object on stdout, the engine, and reading version references."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from recsys.config import Settings, get_settings
from recsys.errors import RecsysError

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line.")]
StrictOption = Annotated[
    bool, typer.Option("--strict", help="Any rejected row fails the import; nothing is written.")
]

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(func: F) -> F:
    """Turn user-caused failures into one line on stderr and exit code 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except RecsysError as exc:
            fail(str(exc))
        except OperationalError as exc:
            fail(f"database error: {str(exc.orig).strip().splitlines()[0]}")
        except SQLAlchemyError as exc:
            fail(f"database error: {str(exc).strip().splitlines()[0]}")
        except KeyboardInterrupt:
            fail("interrupted")

    return wrapper  # type: ignore[return-value]


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


def emit(data: dict[str, Any], as_json: bool, table: Callable[[], None] | None = None) -> None:
    """One JSON object with ``--json``; otherwise ``table()``, or the mapping as aligned text."""
    if as_json:
        typer.echo(json.dumps(data, default=str))
    elif table is not None:
        table()
    else:
        print_mapping(data)


def print_mapping(data: dict[str, Any], indent: int = 0) -> None:
    width = max((len(k) for k in data), default=0)
    for key, value in data.items():
        if isinstance(value, dict):
            typer.echo(f"{' ' * indent}{key}:")
            print_mapping(value, indent + 2)
        else:
            shown = (
                f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else value
            )
            typer.echo(f"{' ' * indent}{key:<{width}}  {shown}")


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def engine_of(settings: Settings) -> Engine:
    from recsys.db.engine import create_engine

    return create_engine(settings.database_url)


def current_engine(*, migrated: bool = False) -> Engine:
    """An engine on the configured database; with ``migrated``, refuse an outdated schema."""
    engine = engine_of(get_settings())
    if migrated:
        from recsys.db.migrate import require_current

        require_current(engine)
    return engine


def safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def version_ref(text: str) -> int | str:
    """A version number (``3`` or ``v3``) or an alias name."""
    from recsys.registry import ALIASES

    digits = text[1:] if text[:1] in ("v", "V") else text
    if digits.isdigit():
        return int(digits)
    if text in ALIASES:
        return text
    raise RecsysError(f"{text!r} is neither a version number nor an alias ({', '.join(ALIASES)})")


def version_number(engine: Engine, text: str) -> int:
    """The version a number or an alias names now."""
    from recsys import registry

    ref = version_ref(text)
    if isinstance(ref, int):
        return ref
    number = registry.alias_version(engine, ref)
    if number is None:
        raise RecsysError(f"there is no {ref} yet")
    return number
