"""The Prefect server's REST API over HTTP: deployments and their latest flow runs.

The dashboard does not import Prefect (a second or more of imports and a client of its own
for two read calls); it asks the server ``PREFECT_API_URL`` names, as any HTTP client may,
and links into the Prefect UI (``PREFECT_UI_URL``, else the API URL without ``/api``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

RUNS_PER_DEPLOYMENT = 5
TIMEOUT_SECONDS = 3.0


@dataclass(frozen=True)
class FlowRun:
    id: str
    name: str
    state: str
    state_name: str
    started_at: datetime | None
    ended_at: datetime | None
    expected_at: datetime | None
    url: str


@dataclass(frozen=True)
class Deployment:
    id: str
    name: str
    flow_name: str
    paused: bool
    schedules: list[str]
    url: str
    runs: list[FlowRun] = field(default_factory=list)


@dataclass(frozen=True)
class Flows:
    """What the flows page shows: the server, and each deployment with its latest runs;
    ``error`` says why there is nothing when the server did not answer."""

    api_url: str
    ui_url: str
    deployments: list[Deployment]
    error: str | None = None


class PrefectApi:
    def __init__(self, api_url: str, ui_url: str | None = None, *, auth: str | None = None):
        self.api_url = api_url.rstrip("/")
        base = self.api_url[: -len("/api")] if self.api_url.endswith("/api") else self.api_url
        self.ui_url = (ui_url or base).rstrip("/")
        self._headers = {"Authorization": auth} if auth else {}

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> PrefectApi | None:
        """The server of ``PREFECT_API_URL`` (None when unset), with Prefect's own
        credentials (``PREFECT_API_KEY``, or ``PREFECT_API_AUTH_STRING`` user:password)."""
        env = os.environ if env is None else env
        url = (env.get("PREFECT_API_URL") or "").strip()
        if not url:
            return None
        auth = None
        if env.get("PREFECT_API_KEY"):
            auth = f"Bearer {env['PREFECT_API_KEY']}"
        elif env.get("PREFECT_API_AUTH_STRING"):
            import base64

            token = base64.b64encode(env["PREFECT_API_AUTH_STRING"].encode()).decode()
            auth = f"Basic {token}"
        return cls(url, env.get("PREFECT_UI_URL") or None, auth=auth)

    def run_url(self, run_id: str) -> str:
        return f"{self.ui_url}/runs/flow-run/{run_id}"

    def flows(self, runs_per_deployment: int = RUNS_PER_DEPLOYMENT) -> Flows:
        """Every deployment with its latest runs (newest first); an error in words when the
        server cannot be asked."""
        try:
            with httpx.Client(
                base_url=self.api_url, headers=self._headers, timeout=TIMEOUT_SECONDS
            ) as http:
                deployments = _json(http.post("/deployments/filter", json={"limit": 200}))
                flows: list[dict[str, Any]] = []
                runs: list[dict[str, Any]] = []
                if deployments:
                    flow_ids = sorted({d["flow_id"] for d in deployments})
                    flows = _json(
                        http.post("/flows/filter", json={"flows": {"id": {"any_": flow_ids}}})
                    )
                    ids = [d["id"] for d in deployments]
                    runs = _json(
                        http.post(
                            "/flow_runs/filter",
                            json={
                                "deployments": {"id": {"any_": ids}},
                                "sort": "EXPECTED_START_TIME_DESC",
                                "limit": 200,
                            },
                        )
                    )
        except httpx.HTTPError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return Flows(self.api_url, self.ui_url, [], f"the Prefect API did not answer: {reason}")
        names = {f["id"]: f["name"] for f in flows}
        by_deployment: dict[str, list[FlowRun]] = {}
        for run in runs:
            listed = by_deployment.setdefault(run["deployment_id"], [])
            if len(listed) < runs_per_deployment:
                listed.append(self._run(run))
        out = [
            Deployment(
                id=d["id"],
                name=d["name"],
                flow_name=names.get(d["flow_id"], "?"),
                paused=bool(d.get("paused")),
                schedules=[_schedule(s) for s in d.get("schedules") or []],
                url=f"{self.ui_url}/deployments/deployment/{d['id']}",
                runs=by_deployment.get(d["id"], []),
            )
            for d in deployments
        ]
        out.sort(key=lambda d: (d.flow_name, d.name))
        return Flows(self.api_url, self.ui_url, out)

    def _run(self, run: dict[str, Any]) -> FlowRun:
        state = run.get("state") or {}
        return FlowRun(
            id=run["id"],
            name=run.get("name") or "",
            state=str(state.get("type") or run.get("state_type") or "UNKNOWN"),
            state_name=str(state.get("name") or run.get("state_name") or ""),
            started_at=_time(run.get("start_time")),
            ended_at=_time(run.get("end_time")),
            expected_at=_time(run.get("expected_start_time")),
            url=self.run_url(run["id"]),
        )


def _json(response: httpx.Response) -> list[dict[str, Any]]:
    response.raise_for_status()
    data = response.json()
    if not isinstance(data, list):
        raise httpx.DecodingError("expected a list")
    return data


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _schedule(entry: dict[str, Any]) -> str:
    schedule = entry.get("schedule") or {}
    if "cron" in schedule:
        return f"cron {schedule['cron']}"
    if "interval" in schedule:
        return f"every {schedule['interval']} s"
    if "rrule" in schedule:
        return f"rrule {schedule['rrule']}"
    return "schedule"
