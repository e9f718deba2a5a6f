"""The flows page: each Prefect deployment's latest runs with their state, linked into the
Prefect UI; without a Prefect server configured, it says so."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from ui.rendering import dashboard, render

router = APIRouter()


@router.get("/flows", response_class=HTMLResponse)
def flows_page(request: Request) -> Response:
    prefect = dashboard(request).prefect
    return render(
        request,
        "flows.html",
        title="Flows",
        page="flows",
        flows=None if prefect is None else prefect.flows(),
    )
