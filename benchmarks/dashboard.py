"""Dashboard page times: how long the server spends on each page of a real `python -m ui`
(what `recsys ui` runs) over a store of 1M events and 200 model versions.

The store: 1M synthetic events over the last year (the bulk loader), 200 versions registered
by the registry's own ``register()`` (popularity models trained on the last 1-4 days, so each
artifact is small; 50 of each), 40 promotions and 8 rollbacks of the champion, an experiment
with 50k impressions over the last week and 10k clicks on them, and a drift trigger. Each
page is asked ``--repeat`` times after the dashboard's background values are computed; the
time is the server's own (``Server-Timing: app;dur``), the page's HTML included. The first
computations of those values (at start, in the background) are timed apart. Target: every
page under 300 ms.

    .venv/bin/python benchmarks/dashboard.py                          # SQLite and PostgreSQL
    .venv/bin/python benchmarks/dashboard.py --backends sqlite --repeat 10
"""

from __future__ import annotations

import argparse
import html
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from _common import (
    REPO_ROOT,
    Skipped,
    format_table,
    machine_info,
    parse_backends,
    scratch_database,
    verdict,
    write_results,
)

from recsys import registry
from recsys.data.extract import extract, window_start
from recsys.data.load import load_batch
from recsys.data.synthetic import SyntheticConfig, generate
from recsys.db.engine import create_engine
from recsys.db.events import Event, record_events
from recsys.db.migrate import upgrade
from recsys.experiment import train_and_evaluate
from recsys.online.experiments import start_experiment
from recsys.online.impressions import Impression, new_recommendation_id, now_ms, write_impressions
from recsys.online.triggers import claim
from recsys.registry import registration

TARGET_MS = 300.0
SOURCES = ("ui", "recsys/db/queries.py", "recsys/online", "recsys/registry/store.py")
DAY_MS = 86_400_000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--versions", type=int, default=200)
    parser.add_argument("--impressions", type=int, default=50_000)
    parser.add_argument("--clicks", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20, help="requests per page")
    parser.add_argument("--backends", default="sqlite,postgresql")
    return parser.parse_args()


def build(url: str, home: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The store described above; returns what the pages will be asked about."""
    upgrade(create_engine(url))
    engine = create_engine(url)
    started = time.perf_counter()
    first_day = (datetime.now(UTC) - timedelta(days=365)).strftime("%Y-%m-%d")
    batch = generate(
        SyntheticConfig(args.users, args.items, args.events, seed=0, start=first_day, days=365)
    )
    load_batch(engine, batch)
    loaded = time.perf_counter() - started
    print(f"  {args.events:,} events loaded in {loaded:.1f} s", flush=True)

    started = time.perf_counter()
    outcomes = []
    for days in (1, 2, 3, 4):
        snapshot = extract(engine, after_ms=window_start(days))
        outcomes.append(
            train_and_evaluate(
                engine,
                "pop",
                "loo",
                snapshot=snapshot,
                train_overrides={"progress": False, "threads": 1},
            )
        )
    versions = []
    for n in range(args.versions):
        record = registration.register(
            engine, outcomes[n % len(outcomes)], artifacts_dir=home / "artifacts"
        )
        versions.append(record.version)
    rng = random.Random(0)
    for n, version in enumerate(versions[::5]):
        registry.promote(engine, version, actor="benchmark", reason=f"promotion {n + 1}")
        if n % 5 == 4:
            registry.rollback(engine, actor="benchmark", reason="benchmark rollback")
    registered = time.perf_counter() - started
    print(f"  {len(versions)} versions registered in {registered:.1f} s", flush=True)

    started = time.perf_counter()
    champion = registry.alias_version(engine, registry.CHAMPION)
    assert champion is not None
    challenger = next(v for v in reversed(versions) if v != champion)
    experiment = start_experiment(engine, challenger, 0.5, actor="benchmark", reason="benchmark")
    artifact = registry.load_artifact(engine, champion)
    users, items = artifact.user_ids, artifact.item_ids
    now = now_ms()
    shown: list[Impression] = []
    for _ in range(args.impressions):
        user = rng.choice(users)
        arm = experiment.arm(user)
        shown.append(
            Impression(
                new_recommendation_id(),
                "recommend",
                challenger if arm == "challenger" else champion,
                tuple(rng.sample(items, 10)),
                now - rng.randrange(7 * DAY_MS),
                user_id=user,
                experiment_id=experiment.id,
                arm=arm,
            )
        )
    for start in range(0, len(shown), 10_000):
        write_impressions(engine, shown[start : start + 10_000])
    clicks = [
        Event(
            impression.user_id or "",
            impression.items[rng.randrange(10)],
            "click",
            occurred_at_ms=min(now - 1, impression.shown_at + rng.randrange(60_000)),
            recommendation_id=impression.id if rng.random() < 0.5 else None,
        )
        for impression in rng.sample(shown, args.clicks)
    ]
    for start in range(0, len(clicks), 1_000):
        record_events(engine, clicks[start : start + 1_000])
    claim(
        engine,
        now_ms=now,
        cooldown_seconds=0,
        signals=[{"name": "popularity_psi"}],
        champion_version=champion,
        deployment="retrain/nightly",
        monitor_run_id=None,
        holder="benchmark",
    )
    online = time.perf_counter() - started
    print(f"  {len(shown):,} impressions and {len(clicks):,} clicks in {online:.1f} s", flush=True)
    engine.dispose()
    return {
        "champion": champion,
        "oldest": versions[0],
        "user": users[0],
        "items": items[:3],
        "build_seconds": {"events": loaded, "versions": registered, "online": online},
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_ms(response: httpx.Response) -> float:
    found = re.search(r"dur=([\d.]+)", response.headers.get("server-timing", ""))
    assert found, response.headers
    return float(found.group(1))


def computed(page: str) -> list[tuple[str, float]]:
    """The background values a page reports: (what, seconds it took)."""
    return [
        (what, float(seconds))
        for what, seconds in re.findall(
            r"([A-Za-z' ]+) as of [^(]+\(computed in ([\d.]+) s", html.unescape(page)
        )
    ]


def measure(url: str, home: Path, facts: dict[str, Any], repeat: int) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "RECSYS_HOME": str(home),
        "RECSYS_DATABASE_URL": url,
        "PYTHONPATH": str(REPO_ROOT),
    }
    for name in ("RECSYS_SERVICE_URL", "PREFECT_API_URL"):
        env.pop(name, None)
    log = home / "ui.log"
    command = [sys.executable, "-m", "ui", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("w") as out:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        started = time.perf_counter()
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.perf_counter() - started > 120:
                raise SystemExit(f"the dashboard did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        up = time.perf_counter() - started
        http = httpx.Client(base_url=base, timeout=300)
        # The first visits find the values computed at start (warm-up) or on first use not
        # ready yet: the page answers without them (pending) and reloads until they are in.
        first: dict[str, float] = {}
        complete: dict[str, float] = {}
        background: dict[str, float] = {}
        for path in ("/data", "/online", "/online?range=24h", "/online?range=30d"):
            asked = time.perf_counter()
            response = http.get(path)
            response.raise_for_status()
            first[path] = server_ms(response)
            while "data-pending" in response.text:
                time.sleep(0.5)  # what the page's own reload does, every 2 s
                response = http.get(path)
                response.raise_for_status()
            complete[path] = round(time.perf_counter() - asked, 2)
            for what, seconds in computed(response.text):
                background[f"{path}: {what}"] = seconds
        champion, user = facts["champion"], facts["user"]
        pages = [
            "/data",
            "/models",
            "/models?all=1",
            f"/models/{champion}",
            f"/models/{facts['oldest']}",
            "/online",
            "/online?range=24h",
            "/online?range=30d",
            "/explore",
            f"/explore?user={user}",
            f"/explore?items={','.join(facts['items'])}",
            f"/explore?item={facts['items'][0]}",
            "/flows",
        ]
        rows = []
        for path in pages:
            times = []
            for _ in range(repeat):
                response = http.get(path)
                response.raise_for_status()
                times.append(server_ms(response))
            times.sort()
            rows.append(
                {
                    "page": path,
                    "median_ms": round(statistics.median(times), 1),
                    "p95_ms": round(times[min(len(times) - 1, int(0.95 * len(times)))], 1),
                    "max_ms": round(times[-1], 1),
                    "bytes": len(response.content),
                }
            )
            print(
                f"  {path:<40} median {rows[-1]['median_ms']:>7.1f} ms  max "
                f"{rows[-1]['max_ms']:>7.1f} ms",
                flush=True,
            )
        return {"startup_seconds": round(up, 2), "first_ms": first, "complete_s": complete,
                "background": background, "pages": rows}  # fmt: skip
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    args = parse_args()
    results: dict[str, Any] = {}
    tables = []
    notes: list[str] = []
    passed = True
    for backend in parse_backends(args.backends):
        print(f"{backend}:", flush=True)
        try:
            with scratch_database(backend) as url, tempfile.TemporaryDirectory() as folder:
                home = Path(folder)
                facts = build(url, home, args)
                run = measure(url, home, facts, args.repeat)
        except Skipped as exc:
            notes.append(f"{backend}: skipped ({exc})")
            print(f"  skipped: {exc}")
            continue
        run["build_seconds"] = {k: round(v, 1) for k, v in facts["build_seconds"].items()}
        results[backend] = run
        worst = max(max(r["max_ms"] for r in run["pages"]), *run["first_ms"].values())
        ok = worst < TARGET_MS
        passed &= ok
        rows = [
            [r["page"], f"{r['median_ms']:.1f}", f"{r['p95_ms']:.1f}", f"{r['max_ms']:.1f}",
             verdict(r["max_ms"] < TARGET_MS)]
            for r in run["pages"]
        ]  # fmt: skip
        headers = ["page", "median ms", "p95 ms", "max ms", f"< {TARGET_MS:.0f} ms"]
        tables.append((f"{backend}: server time per page ({args.repeat} requests)", headers, rows))
        tables.append(
            (
                f"{backend}: values computed in the background (first time, seconds)",
                ["value", "seconds"],
                [[k, f"{v:.2f}"] for k, v in run["background"].items()],
            )
        )
        tables.append(
            (
                f"{backend}: first visits (the page at once, then its values)",
                ["page", "first response ms", f"< {TARGET_MS:.0f} ms", "values shown after s"],
                [
                    [k, f"{v:.1f}", verdict(v < TARGET_MS), f"{run['complete_s'][k]:.1f}"]
                    for k, v in run["first_ms"].items()
                ],
            )
        )
        print(format_table(headers, rows))
    notes += [
        f"Store: {args.events:,} events of {args.users:,} users on {args.items:,} items over a "
        f"year; {args.versions} registered versions; {args.impressions:,} impressions and "
        f"{args.clicks:,} clicks in the last week, an experiment running.",
        "Server time is the dashboard's Server-Timing header: from the request's arrival to "
        "its response, the rendering of the page included; the browser's own work is not.",
        "The counts of the data page and the online metrics, experiment and drift are computed "
        "in the background (at start, then when the store changes, at most every ten times "
        "their own duration) and pages show the latest. A page never waits more than 0.05 s "
        "for a value computed for the first time (ui.state.FIRST_WAIT): it answers without "
        "it, says so, and reloads itself every 2 s until it is in (the first visits above). "
        "The explorer asked no service (RECSYS_SERVICE_URL unset): the champion's ONNX "
        "graph answered in process. No Prefect server: the flows page says so.",
        "The champion is a popularity model (cheap to register 200 times): it has no item "
        "representations, so similar items answers its one-line refusal and recommendations "
        "carry no explanations; a model with them adds a (I, D) product per page.",
    ]
    info = machine_info(SOURCES)
    summary = f"{verdict(passed)}: every page under {TARGET_MS:.0f} ms" if results else "no run"
    print(summary)
    write_results(
        "ui",
        "Dashboard page times",
        info,
        {"results": results, "verdict": summary},
        tables,
        [summary, *notes],
    )


if __name__ == "__main__":
    main()
