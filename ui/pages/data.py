"""The data page: counts (``recsys stats``), events per day and type, the latest quality
report, the imports and the database sources' syncs with their rejects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from recsys.db import queries
from ui import charts
from ui.rendering import dashboard, render

router = APIRouter()
IMPORTS_SHOWN = 30


@router.get("/data", response_class=HTMLResponse)
def data_page(request: Request) -> Response:
    board = dashboard(request)
    summary = board.data.get()
    runs = queries.recent_imports(board.engine, limit=IMPORTS_SHOWN)
    files = [r for r in runs if r["kind"] != "source"]
    syncs = queries.source_syncs(board.engine)
    day_chart = None
    if summary.value is not None and summary.value.per_day:
        day_chart = charts.events_per_day(summary.value.per_day)
    return render(
        request,
        "data.html",
        title="Data",
        page="data",
        summary=summary,
        stats=None if summary.value is None else summary.value.stats,
        day_chart=day_chart,
        quality=latest_quality(board.settings.reports_dir),
        imports=files,
        syncs=syncs,
    )


def latest_quality(reports: Path) -> dict[str, Any] | None:
    """The quality report of the latest retrain that wrote one (``reports/retrain-*.json``),
    with when it was written and the run's report."""
    if not reports.is_dir():
        return None
    candidates = sorted(
        reports.glob("retrain-*.json"), key=lambda p: p.stat().st_mtime, reverse=True
    )
    for path in candidates[:20]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if data.get("quality"):
            return {
                "quality": data["quality"],
                "written_at": data.get("written_at"),
                "summary": data.get("summary") or {},
                "report": path.with_suffix(".md").name,
            }
    return None


@router.get("/data/imports/{import_id}/rejects")
def rejects_file(request: Request, import_id: int) -> Response:
    """The rejects CSV of an import or a source sync, when it lies in the rejects folder."""
    board = dashboard(request)
    run = queries.import_run(board.engine, import_id)
    if run is None or not run.get("rejects_path"):
        return render(
            request, "message.html", 404, title="Not found", error="no rejects file for that import"
        )
    path = Path(run["rejects_path"]).resolve()
    folder = board.settings.rejects_dir.resolve()
    if not path.is_relative_to(folder) or not path.is_file():
        return render(
            request,
            "message.html",
            404,
            title="Not found",
            error="that rejects file is not in this home's rejects folder (moved or elsewhere)",
        )
    return FileResponse(path, media_type="text/csv", filename=path.name)
