"""The explorer: a user's history beside what the service recommends them (scores, filters,
explanations); the same for an anonymous session and for the items similar to one."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from recsys.db import queries
from recsys.ranking import Filters
from ui.explorer import Answer
from ui.rendering import dashboard, render

router = APIRouter()
HISTORY_SHOWN = 50
MAX_K = 100


def _words(text: str | None) -> tuple[str, ...]:
    return tuple(w.strip() for w in (text or "").split(",") if w.strip())


def _number(text: str | None, kind: type) -> Any:
    if text is None or not text.strip():
        return None
    try:
        return kind(text)
    except ValueError:
        return None


def _form(request: Request) -> tuple[int, Filters, dict[str, str]]:
    """k and the filters from the query string, and the query as the form shows it again."""
    q = request.query_params
    k = max(1, min(MAX_K, _number(q.get("k"), int) or 10))
    filters = Filters(
        include_genres=_words(q.get("include_genres")),
        exclude_genres=_words(q.get("exclude_genres")),
        exclude_items=_words(q.get("exclude_items")),
        min_year=_number(q.get("min_year"), int),
        max_year=_number(q.get("max_year"), int),
        min_price=_number(q.get("min_price"), float),
        max_price=_number(q.get("max_price"), float),
    )
    return k, filters, {key: q.get(key, "") for key in q}


@router.get("/explore", response_class=HTMLResponse)
def explore(request: Request) -> Response:
    """``?user=ID``, ``?items=a,b,c`` (an anonymous session) or ``?item=ID`` (similar items),
    each with ``k`` and the filters."""
    board = dashboard(request)
    k, filters, form = _form(request)
    user = (request.query_params.get("user") or "").strip()
    session = list(_words(request.query_params.get("items")))
    item = (request.query_params.get("item") or "").strip()
    mode, answer, history, known = None, None, [], None
    titles: dict[str, str | None] = {}
    if user:
        mode = "user"
        history = queries.user_events(board.engine, user, limit=HISTORY_SHOWN)
        known = bool(history) or queries.find_users(board.engine, user, limit=1) == [user]
        answer = board.explorer.recommend(user, k, filters)
    elif session:
        mode = "session"
        titles = queries.item_titles(board.engine, session)
        answer = board.explorer.session(session, k, filters)
    elif item:
        mode = "similar"
        titles = queries.item_titles(board.engine, [item])
        answer = board.explorer.similar(item, k, filters)
    return render(
        request,
        "explore.html",
        title="Explore",
        page="explore",
        mode=mode,
        user=user,
        session=session,
        item=item,
        k=k,
        form=form,
        history=history,
        known=known,
        titles=titles,
        answer=answer,
        service_url=board.explorer.url,
        genres=_genres(board),
    )


def _genres(board: Any) -> list[str]:
    """The catalogue's genres (for the filter's suggestions), from the champion's catalogue."""
    try:
        artifact = board.artifacts.champion()
    except Exception:
        return []
    return sorted(board.artifacts.catalogue(artifact).genres)


@router.get("/explore/users.json")
def users(request: Request, q: str = "") -> Response:
    return JSONResponse(queries.find_users(dashboard(request).engine, q, limit=20) if q else [])


@router.get("/explore/items.json")
def items(request: Request, q: str = "") -> Response:
    found = queries.find_items(dashboard(request).engine, q, limit=20) if q else []
    return JSONResponse([{"id": i, "title": t} for i, t in found])


__all__ = ["Answer", "router"]
