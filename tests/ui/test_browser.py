"""The dashboard in a real browser: headless Chromium (Playwright) against a real `recsys ui`,
a real `bentoml serve` and a temporary Prefect server, on a home built the way the demo builds
its own. Every page is visited and its numbers checked against the CLI and the service, the
explorer is used (the service answering, then the champion in process once the service is
gone), a promotion is made with an admin key and refused without one, and each page is saved
to docs/screenshots/ (shown in the README).

Needs Chromium (Debian's `chromium`) and the `playwright` package; without them the test
skips saying which is missing, except under CI (`CI` set), where it fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from recsys import keys, registry
from recsys.db.schema import impressions_table
from recsys.online.experiments import start_experiment

from .conftest import ROOT, Home, build_home, free_port, serving

pytestmark = pytest.mark.integration

SCREENSHOTS = ROOT / "docs" / "screenshots"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
VIEWPORT = {"width": 1360, "height": 900}
USERS = [f"u{n}" for n in range(1, 121)]


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: CI must install it (.ci/run)")
    pytest.skip(reason)


def chromium() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("the playwright package is not installed (pip install playwright)")
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    _missing("no Chromium browser installed (apt-get install chromium)")
    raise AssertionError("unreachable")


def cli(env: dict[str, str], *args: str) -> dict[str, Any]:
    """`recsys ARGS --json`, as a user would run it, and its JSON."""
    done = subprocess.run(
        [str(Path(sys.executable).with_name("recsys")), *args, "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    data: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return data


def interval(estimate: dict[str, Any]) -> str:
    """An estimate as the dashboard writes it (ui.rendering.interval)."""
    if estimate["value"] is None:
        return "-"
    if estimate["ci_low"] is None:
        return f"{estimate['value']:.4f}"
    return f"{estimate['value']:.4f} [{estimate['ci_low']:.4f}, {estimate['ci_high']:.4f}]"


@pytest.fixture(scope="module")
def prefect_url() -> Iterator[str]:
    """A temporary Prefect server with a deployment and a few runs of it."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        url = str(PREFECT_API_URL.value())
        flow = httpx.post(f"{url}/flows/", json={"name": "retrain"}).json()
        deployment = httpx.post(
            f"{url}/deployments/",
            json={
                "name": "nightly",
                "flow_id": flow["id"],
                "schedules": [{"schedule": {"cron": "0 3 * * *"}}],
            },
        ).json()
        for state in ("COMPLETED", "FAILED", "RUNNING"):
            run = httpx.post(f"{url}/deployments/{deployment['id']}/create_flow_run", json={})
            for step in ("RUNNING", state) if state != "RUNNING" else ("RUNNING",):
                httpx.post(
                    f"{url}/flow_runs/{run.json()['id']}/set_state",
                    json={"state": {"type": step, "name": step.title()}, "force": True},
                ).raise_for_status()
        yield url


def traffic(service: str, key: str, home: Home) -> int:
    """A recommend call per user; a click on the first item of every third list, naming
    it; until the service has written every impression. Returns the number of lists."""
    auth = {"Authorization": f"Bearer {key}"}
    for n, user in enumerate(USERS):
        reply = httpx.post(f"{service}/recommend", json={"user_id": user, "k": 10}, headers=auth)
        reply.raise_for_status()
        body = reply.json()
        if n % 3 == 0:
            event = {
                "user_id": user,
                "item_id": body["items"][0]["item_id"],
                "event_type": "click",
                "recommendation_id": body["recommendation_id"],
            }
            httpx.post(
                f"{service}/events", json={"events": [event]}, headers=auth
            ).raise_for_status()
    deadline = time.monotonic() + 60
    import sqlalchemy as sa

    while True:
        with home.engine.connect() as conn:
            written = conn.execute(
                sa.select(sa.func.count()).select_from(impressions_table)
            ).scalar()
        if written == len(USERS):
            return len(USERS)
        assert time.monotonic() < deadline, f"{written} of {len(USERS)} impressions written"
        time.sleep(0.2)


@pytest.mark.slow
def test_the_dashboard_in_a_browser(
    tmp_path_factory: pytest.TempPathFactory, prefect_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    executable = chromium()
    # The champion's history names this operator rather than this host's user, in the
    # screenshots too (every process started below inherits it).
    monkeypatch.setenv("RECSYS_OPERATOR", "docs walkthrough")
    from playwright.sync_api import expect, sync_playwright

    with ExitStack() as stack:
        run(stack, tmp_path_factory, prefect_url, executable, expect, sync_playwright)


def run(
    stack: ExitStack,
    tmp_path_factory: pytest.TempPathFactory,
    prefect_url: str,
    executable: str,
    expect: Any,
    sync_playwright: Any,
) -> None:
    home = build_home(tmp_path_factory.mktemp("browser") / "home")
    logs = home.path / "logs"
    logs.mkdir()
    client_key, _ = keys.create_key(home.engine, "dashboard", [keys.READ, keys.EVENTS])
    admin_key, _ = keys.create_key(home.engine, "alice", [keys.ADMIN])
    pop, _, challenger = home.versions  # pop, EASE (the champion), SASRec
    start_experiment(
        home.engine, challenger, 0.5, actor=registry.actor("tests"), reason="does it beat ease?"
    )
    service_port, ui_port = free_port(), free_port()
    service = f"http://127.0.0.1:{service_port}"
    base = f"http://127.0.0.1:{ui_port}"
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    service_env = {
        **home.env,
        "RECSYS_POLL_SECONDS": "1",
        "RECSYS_IMPRESSION_FLUSH_SECONDS": "0.5",
    }
    ui_env = {
        **home.env,
        "RECSYS_SERVICE_URL": service,
        "RECSYS_API_KEY": client_key,
        "PREFECT_API_URL": prefect_url,
    }
    recsys = str(Path(sys.executable).with_name("recsys"))
    with (
        serving(
            [bentoml, "serve", "serving.service:RecsysService", "--port", str(service_port)],
            service_env,
            logs / "service.log",
            f"{service}/readyz",
        ) as service_process,
        sync_playwright() as playwright,
    ):
        model = httpx.get(f"{service}/model", headers={"Authorization": f"Bearer {client_key}"})
        assert model.json()["challenger_version"] == challenger, model.text
        lists = traffic(service, client_key, home)
        stack.enter_context(
            serving(
                [recsys, "ui", "--port", str(ui_port)], ui_env, logs / "ui.log", f"{base}/healthz"
            )
        )
        args = ["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
        browser = playwright.chromium.launch(executable_path=executable, args=args)
        page = browser.new_page(viewport=VIEWPORT)
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.on(
            "console",
            lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None,
        )

        def visit(path: str) -> None:
            response = page.goto(f"{base}{path}")
            assert response is not None and response.status == 200, path
            # A value still being computed: the page says so and reloads itself until it is in.
            expect(page.locator("[data-pending]")).to_have_count(0, timeout=60_000)
            page.wait_for_selector("html[data-charts-drawn]", state="attached")

        def shot(name: str) -> None:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

        def cells(selector: str) -> list[str]:
            return [c.strip() for c in page.locator(selector).all_inner_texts()]

        # Data: the counts of `recsys stats`, a chart drawn, the imports and their rejects.
        visit("/data")
        stats = cli(home.env, "stats")
        for name in ("users", "items", "interactions", "imports"):
            expect(page.locator(f'[data-stat="{name}"]')).to_have_text(f"{stats[name]:,}")
        for kind, count in stats["interactions_by_event_type"].items():
            expect(page.locator(f'[data-type="{kind}"]')).to_have_text(f"{count:,}")
        assert page.locator("canvas[data-chart=events-per-day]").bounding_box()
        expect(page.locator("#quality")).to_contain_text("interactions")
        expect(page.locator("#imports")).to_contain_text("bad_timestamp 1")
        shot("data")

        # Models: every version with its metrics as the registry has them; the charts.
        visit("/models")
        records = cli(home.env, "models", "list")["versions"]
        rows = page.locator("#versions tbody tr")
        expect(rows).to_have_count(len(records))
        for record in records:
            row = page.locator(f'#versions tr[data-version="{record["version"]}"]')
            expect(row.locator('[data-metric="ndcg@10"]')).to_have_text(
                interval(record["metrics"]["ndcg@10"])
            )
            expect(row).to_contain_text(record["family"])
        expect(page.locator("#champion")).to_have_text(f"v{home.champion}")
        assert page.locator("canvas[data-chart=headline-metric]").bounding_box()
        assert page.locator("canvas[data-chart=champion-timeline]").bounding_box()

        visit(f"/models/{home.champion}")
        shown = cli(home.env, "models", "show", str(home.champion))
        for name, stats_ in shown["metrics"].items():
            expect(page.locator(f'#metrics [data-metric="{name}"]')).to_have_text(
                f"{stats_['value']:.4f}"
            )
        expect(page.locator("#gate")).to_contain_text("Promoted")
        expect(page.locator("#lineage")).to_contain_text(shown["snapshot_digest"])
        shot("version")

        # Online: the report of `recsys online report`, the experiment of `experiments status`.
        visit("/online")
        report = cli(home.env, "online", "report", "--since", "7d")
        assert sum(g["impressions"] for g in report["groups"]) == lists
        for group in report["groups"]:
            row = page.locator(
                f'#online-groups tr[data-version="{group["model_version"]}"]'
                f'[data-arm="{group["arm"] or ""}"]'
            )
            expect(row.locator('[data-field="impressions"]')).to_have_text(
                f"{group['impressions']:,}"
            )
            expect(row.locator('[data-field="ctr"]')).to_have_text(interval(group["ctr@10"]))
        status = cli(home.env, "experiments", "status")
        for arm, metrics in status["arms"].items():
            expect(page.locator(f'#arms tr[data-arm="{arm}"]')).to_contain_text(
                f"{metrics['impressions']:,}"
            )
        ctr = status["differences"][0]
        expect(page.locator("#verdict")).to_contain_text(f"{ctr['diff']:+.4f}")
        expect(page.locator("#drift tr[data-signal=ctr_drop]")).to_be_visible()
        assert page.locator("canvas[data-chart=ctr-over-time]").bounding_box()
        shot("online")

        # Explore: suggestions while typing, then the service's own answer.
        visit("/explore")
        user = USERS[4]
        field = page.locator("#user-form input[name=user]")
        field.press_sequentially(user[:2], delay=50)
        page.wait_for_selector("#user-ids option", state="attached")
        field.fill(user)
        page.locator("#user-form input[name=k]").fill("8")
        page.locator("#user-form button[type=submit]").click()
        page.wait_for_url(re.compile(r".*/explore\?user="))
        expect(page.locator("#answered-by")).to_have_attribute("data-source", "service")
        auth = {"Authorization": f"Bearer {client_key}"}
        direct = httpx.post(
            f"{service}/recommend", json={"user_id": user, "k": 8, "explain": True}, headers=auth
        ).json()
        assert page.locator("#recommendations tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.item)"
        ) == [i["item_id"] for i in direct["items"]]
        scores = cells("#recommendations td[data-score]")
        assert scores == [f"{i['score']:.4f}" for i in direct["items"]]
        expect(page.locator("#history tbody tr").first).to_be_visible()
        expect(page.locator("#recommendations td.because").first).not_to_be_empty()
        shot("explore")

        session_items = ["i1", "i2", "i3"]
        page.locator("#session-form input[name=items]").fill(",".join(session_items))
        page.locator("#session-form input[name=k]").fill("10")
        page.locator("#session-form button[type=submit]").click()
        page.wait_for_url(re.compile(r".*/explore\?items="))
        expect(page.locator("#answered-by")).to_have_attribute("data-source", "service")
        session = httpx.post(
            f"{service}/recommend_session", json={"item_ids": session_items, "k": 10}, headers=auth
        ).json()
        expect(page.locator("#recommendations tbody tr")).to_have_count(len(session["items"]))
        page.locator("#similar-form input[name=item]").fill("i3")
        page.locator("#similar-form input[name=k]").fill("10")
        page.locator("#similar-form button[type=submit]").click()
        page.wait_for_url(re.compile(r".*/explore\?item="))
        similar = httpx.post(
            f"{service}/similar_items", json={"item_id": "i3", "k": 10}, headers=auth
        ).json()
        assert page.locator("#recommendations tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.item)"
        ) == [i["item_id"] for i in similar["items"]]

        # Flows: the deployment and its runs, linked into the Prefect UI.
        visit("/flows")
        runs = page.locator('[data-deployment="retrain/nightly"] tbody tr')
        expect(runs).to_have_count(3)
        for state in ("Completed", "Failed", "Running"):
            expect(runs.filter(has_text=state)).to_have_count(1)
        link = page.locator('[data-deployment="retrain/nightly"] h2 a')
        assert link.get_attribute("href", timeout=5000).startswith(  # type: ignore[union-attr]
            prefect_url.removesuffix("/api")
        )
        shot("flows")

        # A promotion refused without an admin key, then made with one.
        target = pop
        visit("/models")
        form = page.locator("#promote-form")
        form.locator("select[name=version]").select_option(str(target))
        form.locator("input[name=reason]").fill("browser test: no key")
        form.locator("input[name=key]").fill("rsk_not_a_key")
        form.locator("button[type=submit]").click()
        expect(page.locator("h1")).to_have_text("Refused")
        expect(page.locator("[role=alert]")).to_contain_text("not valid")
        assert registry.alias_version(home.engine, registry.CHAMPION) == home.champion
        visit("/models")
        form.locator("select[name=version]").select_option(str(target))
        form.locator("input[name=reason]").fill("browser test: pop for a day")
        form.locator("input[name=key]").fill(admin_key)
        form.locator("button[type=submit]").click()
        expect(page.locator(".flash.ok")).to_contain_text(f"v{home.champion} -> v{target}")
        assert registry.alias_version(home.engine, registry.CHAMPION) == target
        move = registry.alias_history(home.engine)[-1]
        assert (
            move.reason == "browser test: pop for a day"
            and move.actor == "recsys ui, key 'alice' (docs walkthrough)"
        )
        assert admin_key not in page.content()
        visit("/models")  # the champion's history now holds the move
        expect(page.locator("#moves tbody tr").first).to_contain_text("browser test: pop")
        shot("models")

        # The service gone: the explorer answers from the champion's graph in process, as
        # `recsys recommend` does.
        service_process.terminate()
        service_process.wait(timeout=30)
        visit(f"/explore?user={user}&k=8")
        expect(page.locator("#answered-by")).to_have_attribute("data-source", "in-process")
        expect(page.locator("#answered-by")).to_contain_text("did not answer")
        here = cli(home.env, "recommend", user, "-k", "8")
        assert here["version"] == target
        assert page.locator("#recommendations tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.item)"
        ) == [i["item_id"] for i in here["items"]]
        browser.close()
        refused = "status of 401"  # the refused promotion's own page, on purpose
        assert [p for p in problems if refused not in p] == [], problems
