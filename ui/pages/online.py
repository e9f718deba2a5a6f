"""The online page: click-through and conversion per version and arm over time with their
intervals (``recsys online report``), the experiments and the running one's verdict
(``recsys experiments status``), the drift signals against their thresholds (``recsys online
drift``); and the actions that start and stop an experiment."""

from __future__ import annotations

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from recsys import registry
from recsys.online.experiments import list_experiments, running_experiment, start_experiment
from recsys.online.outcomes import stop_experiment
from ui import charts
from ui.computed import DEFAULT_RANGE, RANGES, K, experiment_numbers
from ui.rendering import dashboard, perform, render

router = APIRouter()


@router.get("/online", response_class=HTMLResponse)
def online_page(request: Request, range: str = DEFAULT_RANGE) -> Response:
    board = dashboard(request)
    key = range if range in RANGES else DEFAULT_RANGE
    view = board.online[key].get()
    experiments = list_experiments(board.engine, limit=10)
    shown = experiments[0] if experiments else None
    status = board.experiments[shown.id].get() if shown is not None else None
    drift = board.drift.get()
    ctr_chart = conversion_chart = None
    if view.value is not None and view.value.points:
        v = view.value
        ctr_chart = charts.rates(v.points, "ctr", v.period_ms, v.since_ms, v.until_ms)
        conversion_chart = charts.rates(v.points, "conversion", v.period_ms, v.since_ms, v.until_ms)
    champion = registry.alias_version(board.engine, registry.CHAMPION)
    servable = [v for v in registry.servable_versions(board.engine) if v != champion]
    return render(
        request,
        "online.html",
        title="Online",
        page="online",
        range=key,
        ranges=list(RANGES),
        view=view,
        ctr_chart=ctr_chart,
        conversion_chart=conversion_chart,
        experiments=experiments,
        shown=shown,
        status=status,
        drift=drift,
        champion=champion,
        servable=servable,
        k=K,
    )


@router.post("/online/experiments/start")
def start(
    request: Request,
    challenger: int = Form(...),
    share: float = Form(0.1),
    reason: str = Form(""),
    key: str = Form(""),
) -> Response:
    """``recsys experiments start --challenger N --share S --reason ...`` with an admin key."""
    board = dashboard(request)

    def act(actor: str) -> str:
        experiment = start_experiment(board.engine, challenger, share, actor=actor, reason=reason)
        return (
            f"experiment #{experiment.id} running: v{experiment.challenger_version} answers "
            f"{experiment.share:.0%} of users, v{experiment.champion_version} the rest"
        )

    return perform(request, key, reason, act, "/online")


@router.post("/online/experiments/stop")
def stop(
    request: Request,
    decision: str = Form(...),
    reason: str = Form(""),
    key: str = Form(""),
) -> Response:
    """``recsys experiments stop --promote|--keep --reason ...`` with an admin key."""
    board = dashboard(request)

    def act(actor: str) -> str:
        from recsys.errors import RecsysError

        experiment = running_experiment(board.engine)
        if experiment is None:
            raise RecsysError("no experiment is running")
        numbers = experiment_numbers(board.engine, board.settings, experiment, K)
        stopped = stop_experiment(
            board.engine, decision, actor=actor, reason=reason, status=numbers
        )
        return f"experiment #{stopped.id} stopped: {stopped.decision} ({stopped.decision_reason})"

    return perform(request, key, reason, act, "/online")
