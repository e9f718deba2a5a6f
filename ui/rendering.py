"""Templates and what they share: the layout's context, formatting filters, the markdown of
reports (raw HTML in them is escaped), and the dashboard a request belongs to."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markdown_it import MarkdownIt
from markupsafe import Markup
from sqlalchemy.engine import make_url

from recsys.errors import RecsysError
from ui.auth import Refused
from ui.cache import Result
from ui.state import Dashboard

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=HERE / "templates")
_markdown = MarkdownIt("commonmark", {"html": False}).enable("table")


def dashboard(request: Request) -> Dashboard:
    found: Dashboard = request.app.state.dashboard
    return found


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    board = dashboard(request)
    base = request.scope.get("root_path", "").rstrip("/")
    url = make_url(board.settings.database_url).render_as_string(hide_password=True)
    home = str(board.settings.home)

    def in_home(text: Any) -> Any:
        """Paths under the home written as ``$RECSYS_HOME/...`` (shorter, and the same on
        every machine)."""
        return text.replace(home, "$RECSYS_HOME") if isinstance(text, str) else text

    return templates.TemplateResponse(
        request,
        template,
        {
            "base": base,
            "database": in_home(url),
            "in_home": in_home,
            "done": board.saying(request.query_params.get("done")),
            # A value still being computed for the first time: the page says so and reloads.
            "pending": any(
                isinstance(value, Result) and value.pending for value in context.values()
            ),
            **context,
        },
        status_code=status_code,
    )


def number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:,.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def interval(estimate: Any) -> str:
    """A value with its 95% interval: an Estimate, a report dict (value, ci_low, ci_high) or a
    registry metric (value, ci_low, ci_high)."""
    if estimate is None:
        return "-"
    if not isinstance(estimate, dict):
        estimate = estimate.report()  # rounded as the CLI's reports round it
    value, low, high = estimate.get("value"), estimate.get("ci_low"), estimate.get("ci_high")
    if value is None:
        return "-"
    if low is None or high is None:
        return f"{value:.4f}"
    return f"{value:.4f} [{low:.4f}, {high:.4f}]"


def when(value: Any) -> str:
    """Epoch milliseconds, a datetime or an ISO string as ``YYYY-MM-DD HH:MM:SS`` UTC."""
    if value is None or value == "":
        return "-"
    if isinstance(value, int | float):
        moment = datetime.fromtimestamp(value / 1000, tz=UTC)
    elif isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    else:
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError:
            return str(value)
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def since(epoch_seconds: float | None) -> str:
    if epoch_seconds is None:
        return "-"
    return when(epoch_seconds * 1000)


def markdown(text: str) -> Markup:
    """Markdown as HTML; raw HTML in the text is escaped and unsafe links are refused."""
    return Markup(_markdown.render(text))  # markdown-it escaped what it rendered


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


templates.env.filters.update(
    number=number, interval=interval, when=when, since=since, markdown=markdown, pretty=pretty
)


def perform(
    request: Request, key: str, reason: str, act: Callable[[str], str], back: str
) -> Response:
    """An action that changes state: ``act(actor)`` runs only for an admin key and with a
    reason (both recorded as the CLI records them); then back to ``back`` with what it did,
    or a page saying why not, nothing changed (401/403 without a credential, 400 without a
    reason, 409 when the registry or the experiments refuse)."""
    board = dashboard(request)
    try:
        actor = board.admins.actor(key, "recsys ui")
    except Refused as exc:
        return render(
            request, "message.html", exc.status, title="Refused", error=exc.message, back=back
        )
    if not reason.strip():
        return render(
            request,
            "message.html",
            400,
            title="Refused",
            error="give a reason: it is recorded with the change",
            back=back,
        )
    try:
        done = act(actor)
    except RecsysError as exc:
        return render(request, "message.html", 409, title="Not done", error=str(exc), back=back)
    board.changed_online()
    base = request.scope.get("root_path", "").rstrip("/")
    token = board.said(done)
    return RedirectResponse(f"{base}{back}?{urlencode({'done': token})}", status_code=303)
