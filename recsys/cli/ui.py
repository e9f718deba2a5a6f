"""``recsys ui``: the dashboard, in a process of its own (``python -m ui``) over the same
database and settings."""

from __future__ import annotations

from typing import Annotated

import typer

from recsys.cli.output import current_engine, safe_url, user_errors
from recsys.cli.runner import exec_ui
from recsys.config import get_settings

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(app: typer.Typer) -> None:
    app.command("ui")(ui)


@user_errors
def ui(
    port: Annotated[int, typer.Option(help="HTTP port.", min=1, max=65535)] = 8080,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
) -> None:
    """Start the dashboard: data, models, the champion's history, online metrics,
    experiments, drift, a recommendation explorer and the flows, in the browser."""
    current_engine(migrated=True)  # an outdated schema is one line here, not a traceback there
    url = safe_url(get_settings().database_url)
    typer.echo(f"dashboard on http://{host}:{port} over {url}; Ctrl-C stops it", err=True)
    if host not in LOOPBACK:
        typer.echo(
            f"note: bound to {host}, its pages are readable by whoever reaches that address "
            "(changes still need an admin key)",
            err=True,
        )
    exec_ui(host, port)
