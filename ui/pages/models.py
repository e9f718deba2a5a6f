"""The models pages: every version (``recsys models list --all``), the headline metric with
its interval across versions, the champion's history, one page per version (``recsys models
show``) with its report and lineage; and the actions that move the champion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from recsys import registry
from recsys.artifacts import REPORT_FILE
from recsys.errors import RecsysError
from recsys.online.impressions import now_ms
from ui import charts
from ui.computed import DEFAULT_RANGE
from ui.rendering import dashboard, perform, render

router = APIRouter()
METRICS_SHOWN = ("ndcg@10", "hr@10")
# recsys.retrain.REPORT_FILE (that module reaches the models, and torch, in its functions).
RETRAIN_REPORT_FILE = "retrain-report.md"


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request, all: bool = False) -> Response:
    board = dashboard(request)
    records = registry.list_versions(board.engine, include_hidden=all)
    champion = registry.alias_version(board.engine, registry.CHAMPION)
    moves = registry.alias_history(board.engine)
    champion_moves = [m for m in moves if m.alias == registry.CHAMPION]
    return render(
        request,
        "models.html",
        title="Models",
        page="models",
        records=records,
        show_all=all,
        champion=champion,
        metrics=METRICS_SHOWN,
        headline=registry.DEFAULT_METRIC,
        metric_chart=charts.headline(records, registry.DEFAULT_METRIC, champion),
        timeline=charts.champion_timeline(champion_moves, now_ms()) if champion_moves else None,
        moves=list(reversed(moves)),
        servable=[r.version for r in records if r.status == registry.SERVABLE],
        flow_url=_flow_url(request),
    )


@router.get("/models/{version}", response_class=HTMLResponse)
def version_page(request: Request, version: int) -> Response:
    board = dashboard(request)
    try:
        record = registry.get_version(board.engine, version, include_hidden=True)
    except RecsysError as exc:
        return render(request, "message.html", 404, title="Not found", error=str(exc))
    moves = [
        m
        for m in reversed(registry.alias_history(board.engine))
        if version in (m.from_version, m.to_version)
    ]
    online = board.online[DEFAULT_RANGE].get()
    groups = (
        []
        if online.value is None
        else [g for g in online.value.groups if g.model_version == version]
    )
    return render(
        request,
        "version.html",
        title=f"v{version}",
        page="models",
        record=record,
        moves=moves,
        reports=_reports(record),
        training_chart=charts.training_history(record.training, registry.DEFAULT_METRIC),
        online=groups,
        online_range=DEFAULT_RANGE,
        champion=registry.alias_version(board.engine, registry.CHAMPION),
        flow_url=_flow_url(request),
    )


def _reports(record: registry.ModelRecord) -> list[tuple[str, str]]:
    """The markdown reports in a version's artifact folder: its evaluation, and the report of
    the retrain that trained it."""
    if not record.artifact_path:
        return []
    folder = Path(record.artifact_path)
    found = []
    for name, title in (
        (REPORT_FILE, "Evaluation report"),
        (RETRAIN_REPORT_FILE, "Retrain report"),
    ):
        path = folder / name
        if path.is_file():
            found.append((title, path.read_text(encoding="utf-8", errors="replace")))
    return found


def _flow_url(request: Request) -> Any:
    prefect = dashboard(request).prefect
    return None if prefect is None else prefect.run_url


@router.post("/models/promote")
def promote(
    request: Request,
    version: int = Form(...),
    reason: str = Form(""),
    key: str = Form(""),
) -> Response:
    """``recsys models promote VERSION --reason ...`` with an admin key."""
    board = dashboard(request)

    def act(actor: str) -> str:
        move = registry.promote(board.engine, version, actor=actor, reason=reason)
        return f"champion: v{move.from_version} -> v{move.to_version} (promote: {move.reason})"

    return perform(request, key, reason, act, f"/models/{version}")


@router.post("/models/rollback")
def rollback(request: Request, reason: str = Form(""), key: str = Form("")) -> Response:
    """``recsys models rollback --reason ...`` with an admin key."""
    board = dashboard(request)

    def act(actor: str) -> str:
        move = registry.rollback(board.engine, actor=actor, reason=reason)
        return f"champion: v{move.from_version} -> v{move.to_version} (rollback: {move.reason})"

    return perform(request, key, reason, act, "/models")
