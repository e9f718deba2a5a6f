"""The drift scenario of benchmarks/simulate.py (``--drift``): the users' preferences move
mid-run, the real drift monitor notices and starts the real retrain, and the new champion is
measured as it takes over.

The pieces are the ones a deployment runs, each in its own process:

- a ``bentoml serve`` of the home (EASE champion, no experiment, ``RECSYS_POLL_SECONDS=1``);
- a temporary ``prefect server start`` (a free port, ``PREFECT_HOME`` in the scratch folder);
- ``python -m flows schedule`` serving the retrain deployment (``retrain/nightly``, EASE only,
  its cron at 3 a.m. never due in a run; the sync and the monitor's own cron off);
- the drift monitor, ``python -m flows monitor``, started again and again by a thread of this
  script (about every ``monitor_every`` seconds) from the first window until it starts a
  retrain.

All of them read the drift settings from their environment, scaled to the run: the monitor's
recent window is ``drift_window_s`` seconds, the click-through baseline the ``baseline_s``
before it, ``RECSYS_DRIFT_MIN_SAMPLES`` is ``min_samples`` and the cool-down an hour (one
retrain per run). Thresholds are the defaults.

The driver sends windows of ``window`` recommend requests (users drawn at random, their
clicks reported as in the experiments) at most one window per ``pace`` seconds. Each window
also posts ``organic`` events: users drawn at random pick an item outside any recommendation,
by a softmax of their *current* utility among the items they have not seen
(``World.browse``, how the history itself was drawn), recorded with ``POST /events`` as
``interaction``, the history's own event type. Without them the store would hold only the
old history and clicks on the champion's own lists, and a retrain could not learn the new
taste; they are not of a ``RECSYS_CLICK_EVENTS`` type, so they never count as clicks.

Before window ``shift_at`` the world moves ``World.shift(fraction)``. Users' interest also
wears out on its own (every click and organic pick removes an item they liked from what the
service may show them), so each window also reports the world's expected CTR of the lists
shown and of the oracle's lists (each user's best ``k`` unseen items under the current
preferences): the champion's share of the oracle separates the shift from that wear.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _common import REPO_ROOT, RESULTS_DIR, format_table, machine_info, write_results
from serve import bentoml_serve, free_port
from simworld import World, WorldConfig
from sqlalchemy import func, select

from recsys import registry
from recsys.db.schema import model_versions_table
from recsys.keys import EVENTS, READ, create_key
from recsys.online.metrics import compare, proportion
from recsys.ranking import recommend

ORGANIC = "interaction"  # the imported history's type: training data, never a click
RETRAIN = "retrain/nightly"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
SERVER_START_S = 180.0
MONITOR_TIMEOUT_S = 240.0


@dataclass(frozen=True)
class Plan:
    window: int  # requests per window
    pace: float  # least seconds per window
    organic: int  # organic events per window (at most 1000: one POST)
    shift_at: int  # the window before which the world shifts
    fraction: float  # of the items whose latent vectors move
    drift_window_s: float
    baseline_s: float
    min_samples: int
    monitor_every: float
    after: int  # windows driven once the new champion is served (or the retrain refused)
    give_up: int  # windows after the shift with no retrain finished: stop
    cooldown_s: float = 3600.0
    # The retrain's RECSYS_TRAIN_WINDOW_DAYS: the history spans the 60 days before the run,
    # the run itself minutes, so a week keeps the live events and the newest history only.
    train_window_days: float = 7.0
    # RECSYS_REFIT: the promoted EASE trains again on every event of the window, the users'
    # newest picks (held out by leave-one-out, and right after a shift often the only picks
    # of the new taste) included, and that refit serves.
    refit: bool = True
    # RECSYS_RECENCY_HALF_LIFE_DAYS, in seconds: scaled to the run like the drift windows
    # (the run lasts minutes); None trains every event alike.
    half_life_s: float | None = 40.0

    def report(self) -> dict[str, Any]:
        return dict(self.__dict__)


# The recent window spans 20 windows: the monitor trips once enough of it is past the shift,
# 12 to 40 s after it in the runs so far, when users have made one to three picks each under
# the new taste. The retrain learns that taste from those picks: the refit trains on them all
# (leave-one-out holds out each user's last two, then often their only new ones), and the
# recency weights keep the minute of picks before the shift from outweighing them.
FULL = Plan(
    window=100, pace=2.0, organic=1000, shift_at=30, fraction=0.7, drift_window_s=40.0,
    baseline_s=20.0, min_samples=300, monitor_every=2.0, after=25, give_up=120,
)  # fmt: skip
QUICK = Plan(
    window=100, pace=1.0, organic=1000, shift_at=32, fraction=0.7, drift_window_s=10.0,
    baseline_s=20.0, min_samples=200, monitor_every=1.0, after=10, give_up=90,
)  # fmt: skip


def plan_for(args: Any) -> Plan:
    plan = QUICK if args.quick else FULL
    if args.shift_fraction is not None:
        plan = _replace(plan, fraction=args.shift_fraction)
    if args.organic is not None:
        plan = _replace(plan, organic=args.organic)
    if args.no_refit:
        plan = _replace(plan, refit=False)
    if args.half_life is not None:
        plan = _replace(plan, half_life_s=args.half_life or None)
    return plan


def _replace(plan: Plan, **changes: Any) -> Plan:
    return Plan(**{**plan.report(), **changes})


# The processes ------------------------------------------------------------------------------


@contextmanager
def process(
    command: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A child in its own session, its output in ``log``; stopped (TERM, then KILL) on exit."""
    with log.open("wb") as out:
        child = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            yield child
        finally:
            if child.poll() is None:
                os.killpg(child.pid, 15)
                try:
                    child.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(child.pid, 9)
                    child.wait()


def wait_until(check: Any, what: str, within: float, child: subprocess.Popen[bytes]) -> float:
    started = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        if child.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {child.returncode}")
        if time.monotonic() - started > within:
            raise RuntimeError(f"{what}: not within {within:.0f} s")
        time.sleep(0.5)


class Monitor(threading.Thread):
    """``python -m flows monitor`` again and again until one run starts a retrain."""

    def __init__(self, env: dict[str, str], every: float, origin: float) -> None:
        super().__init__(name="drift-monitor", daemon=True)
        self.env = env
        self.every = every
        self.origin = origin  # epoch seconds of the run's t = 0
        self.checks: list[dict[str, Any]] = []
        self.started_run: dict[str, Any] | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set() and self.started_run is None:
            began = time.time()
            done = subprocess.run(
                [sys.executable, "-m", "flows", "monitor", "{}"],
                cwd=REPO_ROOT, env=self.env, capture_output=True, text=True,
                timeout=MONITOR_TIMEOUT_S,
            )  # fmt: skip
            lines = done.stdout.strip().splitlines()
            try:
                result: dict[str, Any] = json.loads(lines[-1]) if lines else {}
            except json.JSONDecodeError:
                result = {"error": lines[-1][:300]}
            drift = result.get("drift") or {}
            at = drift.get("now_ms", began * 1000) / 1000 - self.origin
            check = {
                "at_s": round(at, 2),
                "took_s": round(time.time() - began, 1),
                "action": result.get("action", "error"),
                "tripped": result.get("tripped", []),
                "reason": result.get("reason") or result.get("error") or done.stderr[-300:],
                "signals": {
                    s["name"]: {k: s.get(k) for k in ("value", "n", "tripped", "detail")}
                    for s in drift.get("signals", [])
                },
                "retrain_run_id": result.get("retrain_run_id"),
            }
            self.checks.append(check)
            print(
                f"  monitor t={at:6.1f}s {check['action']}: tripped {check['tripped'] or '-'}",
                flush=True,
            )
            if check["action"] == "started":
                self.started_run = check
                return
            self.halt.wait(max(0.0, self.every - (time.time() - began)))


# The run ------------------------------------------------------------------------------------


@dataclass
class Window:
    number: int
    start_s: float
    end_s: float
    requests: int
    clicked: int
    expected: float
    oracle: float
    # The old champion's lists for the same requests at the same moment (its ONNX graph in
    # this process, the same history and exclusions): what the shown lists are measured
    # against, free of the users' wear. ``gains``: shown minus old, per request.
    old_expected: float
    gains: list[float]
    versions: dict[int, int]
    organic: int
    events: list[str]

    def report(self) -> dict[str, Any]:
        ctr = proportion(self.clicked, self.requests)
        return {**self.__dict__, "ctr": ctr.report()}


def run_drift(args: Any) -> None:
    """The whole scenario; writes results/simulate-drift(-smoke).{json,md} and -ctr.png."""
    from simulate import Driver, prepare_home

    plan = plan_for(args)
    started = time.perf_counter()
    info = machine_info(
        ("benchmarks/simdrift.py", "benchmarks/simworld.py", "recsys/online", "flows")
    )
    info["load_average"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    world = World(WorldConfig(seed=args.seed))
    seen = {world.user_ids[u]: {world.item_ids[i] for i in h.tolist()} for u, h in
            enumerate(world.histories())}  # fmt: skip
    phases: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="recsys_bench_simdrift_") as scratch:
        home = prepare_home(Path(scratch) / "home", world, roles=(("champion", "ease"),))
        champion_before = home.versions["champion"]
        phases["home (import, train EASE)"] = time.perf_counter() - started
        secret, _ = create_key(home.engine, f"simulator-{os.getpid()}", [READ, EVENTS])
        prefect_home = Path(scratch) / "prefect"
        prefect_home.mkdir()
        port = free_port()
        api = f"http://127.0.0.1:{port}/api"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "PREFECT_"))} | {
            "RECSYS_HOME": str(home.path),
            "RECSYS_DATABASE_URL": home.url,
            "RECSYS_POLL_SECONDS": "1",
            "RECSYS_IMPRESSION_FLUSH_SECONDS": "1",  # impressions readable within a window
            "RECSYS_TRAIN_WORKERS": "1",
            "RECSYS_DRIFT_WINDOW_SECONDS": str(plan.drift_window_s),
            "RECSYS_DRIFT_BASELINE_SECONDS": str(plan.baseline_s),
            "RECSYS_DRIFT_MIN_SAMPLES": str(plan.min_samples),
            "RECSYS_DRIFT_COOLDOWN_SECONDS": str(plan.cooldown_s),
            "RECSYS_TRAIN_WINDOW_DAYS": str(plan.train_window_days),
            "RECSYS_REFIT": "true" if plan.refit else "false",
            **(
                {"RECSYS_RECENCY_HALF_LIFE_DAYS": f"{plan.half_life_s / 86_400:.9f}"}
                if plan.half_life_s
                else {}
            ),
            "PREFECT_HOME": str(prefect_home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "PYTHONPATH": os.pathsep.join(
                [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
        }
        server_env = dict(env)
        client_env = env | {"PREFECT_API_URL": api}
        logs = Path(scratch)
        mark = time.perf_counter()
        prefect = Path(sys.executable).with_name("prefect")
        with (
            process(
                [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                server_env,
                logs / "prefect.log",
            ) as server,
            bentoml_serve("serving.service:RecsysService", client_env, logs / "serve.log") as srv,
        ):
            wait_until(
                lambda: httpx.get(f"{api}/health", timeout=5).status_code == 200,
                "prefect server", SERVER_START_S, server,
            )  # fmt: skip
            phases["prefect server and service start"] = time.perf_counter() - mark
            mark = time.perf_counter()
            schedule = {"models": ["ease"], "sync_cron": "off", "monitor_cron": "off"}
            with process(
                [sys.executable, "-m", "flows", "schedule", json.dumps(schedule)],
                client_env,
                logs / "schedule.log",
            ) as scheduler:
                wait_until(
                    lambda: httpx.get(f"{api}/deployments/name/{RETRAIN}", timeout=5).status_code
                    == 200,
                    "the retrain deployment", SERVER_START_S, scheduler,
                )  # fmt: skip
                phases["retrain deployment served"] = time.perf_counter() - mark
                mark = time.perf_counter()
                driver = Driver(
                    srv.base, secret, world, k=args.k, threads=args.threads, window=plan.window
                )
                try:
                    outcome = drive(plan, args, world, seen, driver, client_env, api, home)
                finally:
                    driver.close()
                phases["driving"] = time.perf_counter() - mark
                if scheduler.poll() is not None:
                    print(f"warning: the scheduler exited with {scheduler.returncode}")
        outcome["champion_before"] = champion_before
        outcome["l2_sweep"] = l2_sweep(home.engine, world, outcome["retrain"], plan)
        home.engine.dispose()
    phases["total"] = time.perf_counter() - started
    report(args, plan, info, world, home.offline, outcome, phases)


def drive(
    plan: Plan,
    args: Any,
    world: World,
    seen: dict[str, set[str]],
    driver: Any,
    env: dict[str, str],
    api: str,
    home: Any,
) -> dict[str, Any]:
    """The windows, the shift, the monitor, the retrain, until the new champion has served
    ``plan.after`` windows (or the retrain refused it, or ``plan.give_up`` windows passed)."""
    old = registry.load_artifact(home.engine, registry.alias_version(home.engine, "champion"))
    origin = time.time()
    monitor = Monitor(env, plan.monitor_every, origin)
    monitor.start()
    windows: list[Window] = []
    marks: dict[str, float] = {}
    retrain: dict[str, Any] = {}
    moved: list[str] = []
    new_champion: int | None = None
    stop_after: int | None = None
    n = 0
    try:
        while stop_after is None or n < stop_after:
            begin = time.time() - origin
            events: list[str] = []
            if n == plan.shift_at:
                moved = world.shift(plan.fraction, args.seed + 99)
                marks["shift"] = begin
                events.append(f"shift ({len(moved)} items moved)")
            oracle_lists: dict[str, float] = {}
            old_lists: list[float] = []
            shown = driver.run(plan.window, args.seed + 1 + n)
            for s in shown:
                if s.user_id not in oracle_lists:
                    best = world.best_items(s.user_id, args.k, sorted(seen[s.user_id]))
                    oracle_lists[s.user_id] = world.expected_ctr(s.user_id, best)
                old_lists.append(world.expected_ctr(s.user_id, old_list(old, seen, s, args.k)))
            for s in shown:
                seen[s.user_id].update(s.clicks)
            organic = post_organic(driver, world, seen, plan.organic, [args.seed, 2, n])
            end = time.time() - origin
            versions = Counter(s.model_version for s in shown)
            window = Window(
                number=n, start_s=round(begin, 2), end_s=round(end, 2), requests=len(shown),
                clicked=sum(1 for s in shown if s.clicks),
                expected=float(np.mean([s.expected_ctr for s in shown])),
                oracle=float(np.mean([oracle_lists[s.user_id] for s in shown])),
                old_expected=float(np.mean(old_lists)),
                gains=[s.expected_ctr - o for s, o in zip(shown, old_lists, strict=True)],
                versions=dict(sorted(versions.items())), organic=organic, events=events,
            )  # fmt: skip
            windows.append(window)
            # What happened since the last window: the monitor, the retrain, the service.
            trip = monitor.started_run
            if trip is not None and "trip" not in marks:
                marks["trip"] = trip["at_s"]
                events.append(f"monitor tripped ({', '.join(trip['tripped'])}): retrain started")
            if trip is not None and not retrain.get("done"):
                retrain = retrain_state(api, trip["retrain_run_id"], origin, retrain)
                if retrain.get("start_s") is not None:
                    marks["retrain start"] = retrain["start_s"]
                if retrain.get("done"):
                    marks["retrain done"] = retrain["end_s"]
                    new_champion = registry.alias_version(home.engine, registry.CHAMPION)
                    retrain |= gate_of_latest(home.engine)
                    retrain["champion_after"] = new_champion
                    events.append(f"retrain {retrain['state'].lower()}: {retrain['verdict']}")
                    if not retrain["promoted"]:
                        stop_after = n + 1 + plan.after
            if (
                new_champion is not None
                and retrain.get("promoted")
                and "served" not in marks
                and versions.get(new_champion)
            ):
                marks["served"] = begin
                events.append(f"new champion v{new_champion} served")
                stop_after = n + plan.after
            cell = f"{window.clicked}/{window.requests}"
            print(
                f"window {n:3d} t={begin:6.1f}s CTR {cell} expected {window.expected:.3f} "
                f"oracle {window.oracle:.3f} versions {dict(versions)} {'; '.join(events)}",
                flush=True,
            )
            n += 1
            if stop_after is None and n >= plan.shift_at + plan.give_up:
                print("giving up: no retrain finished in time", flush=True)
                break
            time.sleep(max(0.0, plan.pace - (time.time() - origin - begin)))
    finally:
        monitor.halt.set()
        monitor.join(MONITOR_TIMEOUT_S)
    return {
        "windows": [w.report() for w in windows],
        "marks": {k: round(v, 2) for k, v in marks.items()},
        "checks": monitor.checks,
        "retrain": retrain,
        "moved_items": len(moved),
        "new_champion": new_champion if retrain.get("promoted") else None,
    }


def post_organic(
    driver: Any, world: World, seen: dict[str, set[str]], count: int, seed: list[int]
) -> int:
    """``count`` users (drawn at random) each pick one unseen item by their current taste."""
    if count <= 0:
        return 0
    rng = np.random.default_rng(seed)
    users = rng.integers(0, len(world.user_ids), count)
    events = []
    for u in users.tolist():
        user_id = world.user_ids[u]
        item = world.browse(user_id, seen[user_id], rng)
        if item is None:
            continue
        seen[user_id].add(item)
        events.append({"user_id": user_id, "item_id": item, "event_type": ORGANIC})
    for start in range(0, len(events), 1000):
        driver._post("/events", {"events": events[start : start + 1000]})
    return len(events)


def retrain_state(api: str, run_id: str, origin: float, known: dict[str, Any]) -> dict[str, Any]:
    """The retrain flow run as the Prefect API has it (times in seconds of the run)."""
    response = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10)
    response.raise_for_status()
    body = response.json()
    state = (body.get("state") or {}).get("type", "UNKNOWN")
    out = dict(known) | {"run_id": run_id, "state": state, "done": state in TERMINAL}
    for key, field in (("start_s", "start_time"), ("end_s", "end_time")):
        if body.get(field):
            moment = _epoch(body[field])
            out[key] = round(moment - origin, 2)
    return out


SWEEP_L2 = (30.0, 100.0, 300.0, 1000.0, 3000.0)


def l2_sweep(
    engine: Any, world: World, retrain: dict[str, Any], plan: Plan
) -> list[dict[str, Any]]:
    """On the retrain's own snapshot, for EASE's l2 over ``SWEEP_L2`` and the one it chose:
    validation NDCG@10 of the measured fit (what the search maximises) and the world's
    expected CTR@10 of the served fit's lists (the refit's, or the measured one's) for 1,000
    users, their histories and exclusions as at the retrain. Shows whether the offline choice
    is the one the users would have clicked most."""
    from dataclasses import replace as dc_replace

    from recsys.data.extract import extract
    from recsys.data.splits import leave_last_out, with_every_event
    from recsys.evaluation import evaluate
    from recsys.models import build_model
    from recsys.models.base import torch_scorer
    from recsys.models.ease import EASEConfig
    from recsys.training import EVAL_MAX_LEN, TrainConfig, train

    trained_on = retrain.get("trained_on") or {}
    cut = trained_on.get("max_occurred_at_ms")
    if not retrain.get("promoted") or cut is None:
        return []
    everything = extract(engine)
    keep = everything.occurred_at <= cut
    columns = ("user_idx", "item_idx", "occurred_at", "value", "event")
    upto = dc_replace(everything, **{c: getattr(everything, c)[keep] for c in columns})
    after = trained_on.get("after_ms")
    recent = upto.occurred_at > after if after is not None else np.ones(keep.sum(), bool)
    window = dc_replace(upto, **{c: getattr(upto, c)[recent] for c in columns})
    data = leave_last_out(window)
    every = with_every_event(data, window)
    valid_at = _validation_times(window, data.valid.users)
    seen = np.zeros((upto.num_users + 1, upto.num_items), dtype=np.float32)
    seen[upto.user_idx, upto.item_idx - 1] = 1.0
    rng = np.random.default_rng(0)
    users = rng.choice(
        np.arange(1, upto.num_users + 1), size=min(1000, upto.num_users), replace=False
    )
    user_ids, item_ids = upto.users.to_list(), upto.items.to_list()
    chosen = (trained_on.get("chosen") or {}).get("l2")
    half_life = None if not plan.half_life_s else plan.half_life_s / 86_400
    quiet = TrainConfig(threads=1, progress=False)

    def expected(model: Any) -> float:
        scores = seen[users] @ model.weights.numpy()[1:]
        scores[seen[users] > 0] = -np.inf
        top = np.argsort(-scores, axis=1)[:, :10]
        return float(np.mean([
            world.expected_ctr(user_ids[u - 1], [item_ids[j] for j in row])
            for u, row in zip(users.tolist(), top.tolist(), strict=True)
        ]))  # fmt: skip

    rows = []
    for l2 in sorted({*SWEEP_L2, *([float(chosen)] if chosen else [])}):
        config = EASEConfig(l2=l2, half_life_days=half_life)
        measured = build_model("ease", data.num_users, data.num_items, config=config)
        train(measured, data, quiet)
        served = measured
        if plan.refit:
            served = build_model("ease", data.num_users, data.num_items, config=config)
            train(served, every, quiet, validating=False)
        per_user = evaluate(
            torch_scorer(measured),
            data.valid,
            num_items=data.num_items,
            protocol="loo",
            ks=(10,),
            max_len=EVAL_MAX_LEN,
        ).per_user["ndcg@10"]
        weights = 0.5 ** ((cut - valid_at) / (plan.half_life_s or RECENT_HALF_LIFE_S) / 1000)
        rows.append({
            "l2": l2, "chosen": l2 == chosen, "valid_ndcg@10": float(per_user.mean()),
            "recent_ndcg@10": float(np.average(per_user, weights=weights)),
            "expected_ctr@10": expected(served), "measured_ctr@10": expected(measured),
        })  # fmt: skip
    return rows


# Without a half-life the sweep's recency-weighted column still weighs by 40 s.
RECENT_HALF_LIFE_S = 40.0


def _validation_times(window: Any, users: np.ndarray) -> np.ndarray:
    """When each validation target happened (ms): leave-one-out's target is each user's second
    newest event of the window."""
    counts = np.bincount(window.user_idx, minlength=window.num_users + 1)
    from_end = np.cumsum(counts)[window.user_idx] - 1 - np.arange(len(window.user_idx))
    at = np.zeros(window.num_users + 1, dtype=np.int64)
    second = (counts[window.user_idx] >= 3) & (from_end == 1)
    at[window.user_idx[second]] = window.occurred_at[second]
    out: np.ndarray = at[users]
    return out


def old_list(old: Any, seen: dict[str, set[str]], shown: Any, k: int) -> list[str]:
    """The old champion's top ``k`` for the user of ``shown`` as the request found them.

    ``seen`` holds the user's events before the request's clicks (their order does not
    matter to EASE, the only family the drift scenario serves).
    """
    ranked = recommend(old, sorted(seen[shown.user_id]), user_id=shown.user_id, k=k)
    return [item.item_id for item in ranked.items]


def _epoch(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def gate_of_latest(engine: Any) -> dict[str, Any]:
    """The newest version and its gate decision (what the retrain registered and decided)."""
    with engine.connect() as conn:
        latest = conn.execute(select(func.max(model_versions_table.c.version))).scalar_one()
    record = registry.get_version(engine, int(latest))
    refit_of = record.refit_of
    if refit_of is not None:  # the refit of the promoted version: the gate is on that one
        record = registry.get_version(engine, refit_of)
    gate = record.gate or {}
    promoted = bool(gate.get("promoted"))
    verdict = (
        f"v{record.version} {'promoted' if promoted else 'not promoted'}: {gate.get('reason')}"
    )
    if refit_of is not None:
        verdict += f"; its refit on every event, v{latest}, serves"
    snapshot = record.snapshot or {}
    trained_on = {
        key: snapshot.get(key)
        for key in ("after_ms", "max_occurred_at_ms", "num_interactions", "num_users", "digest")
    } | {"chosen": (record.training or {}).get("chosen"), "params": record.params}
    return {
        "version": int(latest),
        "promoted": promoted,
        "gate": gate,
        "verdict": verdict,
        "trained_on": trained_on,
    }


# The report ---------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _ci(clicked: int, n: int) -> str:
    p = proportion(clicked, n)
    if p.value is None:
        return "-"
    return f"{_pct(p.value)} [{_pct(p.low)}, {_pct(p.high)}]"


def stretches(outcome: dict[str, Any], plan: Plan) -> list[tuple[str, list[dict[str, Any]]]]:
    """The windows before the shift, after it until the new champion, and under it."""
    windows = outcome["windows"]
    marks = outcome["marks"]
    before = [w for w in windows if w["number"] < plan.shift_at]
    served = marks.get("served")
    after_shift = [
        w
        for w in windows
        if w["number"] >= plan.shift_at and (served is None or w["start_s"] < served)
    ]
    under_new = [] if served is None else [w for w in windows if w["start_s"] >= served]
    return [
        ("before the shift", before),
        ("after the shift, old champion", after_shift),
        ("new champion", under_new),
    ]


def recovery(outcome: dict[str, Any], plan: Plan) -> dict[str, Any] | None:
    """How much better the new champion does than the old one would. Two measurements:

    - ``paired``: for the requests it served, the world's expected CTR of its lists minus that
      of the old champion's lists for the same requests (mean, 95% normal interval); the
      users' wear is the same on both sides;
    - ``observed``: its clicked share against the old champion's after the shift (b - a),
      which the wear between the two stretches also lowers.
    """
    (_, _), (_, old), (_, new) = stretches(outcome, plan)
    if not new:
        return None
    gains = np.array([g for w in new for g in w["gains"]], dtype=np.float64)
    half = 1.959964 * gains.std(ddof=1) / math.sqrt(len(gains)) if len(gains) > 1 else math.nan
    paired = {
        "mean_gain": float(gains.mean()),
        "ci_low": float(gains.mean() - half),
        "ci_high": float(gains.mean() + half),
        "requests": len(gains),
        "new_expected": float(np.mean([w["expected"] for w in new])),
        "old_expected": float(np.mean([w["old_expected"] for w in new])),
    }
    observed = None
    if old:
        total = {label: (sum(w["clicked"] for w in ws), sum(w["requests"] for w in ws))
                 for label, ws in (("old", old), ("new", new))}  # fmt: skip
        observed = compare("ctr@10", *total["old"], *total["new"]).report()
    return {"paired": paired, "observed": observed, "better": paired["ci_low"] > 0}


def recovery_text(found: dict[str, Any] | None) -> str:
    if found is None:
        return "-"
    p = found["paired"]
    verdict = "better than the old champion" if found["better"] else "NOT better than the old"
    return (
        f"{verdict}: expected CTR of its lists {_pct(p['new_expected'])} vs the old champion's "
        f"for the same {p['requests']:,} requests {_pct(p['old_expected'])}, gain "
        f"{p['mean_gain'] * 100:+.1f} points, 95% CI [{p['ci_low'] * 100:+.1f}, "
        f"{p['ci_high'] * 100:+.1f}]"
    )


def observed_text(found: dict[str, Any] | None) -> str:
    o = None if found is None else found["observed"]
    if o is None or o["diff"] is None:
        return "-"
    return (
        f"{_pct(o['b'])} vs {_pct(o['a'])} after the shift under the old champion, "
        f"difference {o['diff'] * 100:+.1f} points, 95% CI [{o['ci_low'] * 100:+.1f}, "
        f"{o['ci_high'] * 100:+.1f}], p={o['p_value']:.2g} (users' wear lowers both)"
    )


def restored(outcome: dict[str, Any], plan: Plan) -> dict[str, Any] | None:
    """The new champion's clicked share against the old champion's before the shift (b - a):
    whether the click-through came back to where it was (the users' wear lowers b)."""
    (_, before), (_, _), (_, new) = stretches(outcome, plan)
    if not new or not before:
        return None
    total = {label: (sum(w["clicked"] for w in ws), sum(w["requests"] for w in ws))
             for label, ws in (("before", before), ("new", new))}  # fmt: skip
    return compare("ctr@10", *total["before"], *total["new"]).report()


def restored_text(outcome: dict[str, Any], plan: Plan) -> str:
    o = restored(outcome, plan)
    if o is None or o["diff"] is None:
        return "-"
    return (
        f"{_pct(o['b'])} vs {_pct(o['a'])} before the shift, difference "
        f"{o['diff'] * 100:+.1f} points, 95% CI [{o['ci_low'] * 100:+.1f}, "
        f"{o['ci_high'] * 100:+.1f}], p={o['p_value']:.2g}"
    )


def summary_rows(outcome: dict[str, Any], plan: Plan) -> list[list[str]]:
    rows = []
    for label, ws in stretches(outcome, plan):
        n = sum(w["requests"] for w in ws)
        clicked = sum(w["clicked"] for w in ws)
        expected = sum(w["expected"] * w["requests"] for w in ws) / n if n else None
        oracle = sum(w["oracle"] * w["requests"] for w in ws) / n if n else None
        old = sum(w["old_expected"] * w["requests"] for w in ws) / n if n else None
        share = None if not oracle or expected is None else expected / oracle
        rows.append(
            [label, f"{len(ws)}", f"{n:,}", _ci(clicked, n), _pct(expected), _pct(old),
             _pct(oracle), "-" if share is None else f"{share:.2f}"]
        )  # fmt: skip
    return rows


def report(
    args: Any,
    plan: Plan,
    info: dict[str, Any],
    world: World,
    offline: dict[str, Any],
    outcome: dict[str, Any],
    phases: dict[str, float],
) -> None:
    name = "simulate-drift-smoke" if args.quick else "simulate-drift"
    marks = outcome["marks"]
    window_rows = [
        [
            f"{w['number']}",
            f"{w['start_s']:.1f}",
            f"{w['requests']}",
            _ci(w["clicked"], w["requests"]),
            _pct(w["expected"]),
            _pct(w["old_expected"]),
            _pct(w["oracle"]),
            ", ".join(f"v{v}" + (f" ({c})" if len(w["versions"]) > 1 else "")
                      for v, c in w["versions"].items()),
            "; ".join(w["events"]) or "-",
        ]
        for w in outcome["windows"]
    ]  # fmt: skip
    check_rows = [
        [
            f"{c['at_s']:.1f}",
            f"{c['took_s']:.1f}",
            c["action"],
            ", ".join(c["tripped"]) or "-",
            _signal(c, "ctr_drop"),
            _signal(c, "popularity_psi"),
        ]
        for c in outcome["checks"]
    ]
    timing = []
    for a, b in (("shift", "trip"), ("trip", "retrain start"), ("retrain start", "retrain done"),
                 ("retrain done", "served"), ("shift", "served")):  # fmt: skip
        gap = marks[b] - marks[a] if a in marks and b in marks else None
        timing.append([f"{a} -> {b}", "-" if gap is None else f"{gap:.1f}"])
    retrain = outcome["retrain"]
    retrain_rows = [
        ["flow run", f"{retrain.get('run_id', '-')} ({retrain.get('state', 'not started')})"],
        ["champion before", f"v{outcome['champion_before']}"],
        ["gate", str(retrain.get("verdict", "-"))],
        ["champion after", f"v{retrain.get('champion_after', outcome['champion_before'])}"],
        ["new champion vs old, same requests", recovery_text(recovery(outcome, plan))],
        ["observed CTR@10, new champion", observed_text(recovery(outcome, plan))],
        ["observed CTR@10, new champion vs before the shift", restored_text(outcome, plan)],
    ]
    sweep_rows = [
        [f"{r['l2']:g}" + (" (chosen)" if r["chosen"] else ""), f"{r['valid_ndcg@10']:.4f}",
         f"{r['recent_ndcg@10']:.4f}", _pct(r["expected_ctr@10"]), _pct(r["measured_ctr@10"])]
        for r in outcome.get("l2_sweep", [])
    ]  # fmt: skip
    phase_rows = [[phase, f"{seconds:.1f}"] for phase, seconds in phases.items()]
    tables = [
        (
            f"Per window ({plan.window} requests each; t: seconds since the first)",
            ["window", "t", "requests", "CTR@10 [95% CI]", "expected", "old champion", "oracle",
             "served", "events"],
            window_rows,
        ),
        (
            "Click-through by stretch (expected: the world's rate for the lists shown; old "
            "champion: for the old champion's lists for the same requests; oracle: for each "
            "user's best unseen items)",
            ["stretch", "windows", "requests", "CTR@10 [95% CI]", "expected", "old champion",
             "oracle", "expected / oracle"],
            summary_rows(outcome, plan),
        ),
        (
            "Drift monitor runs (python -m flows monitor; at: its clock, seconds since the first "
            "window)",
            ["at", "took s", "action", "tripped", "ctr_drop (n)", "popularity_psi (n)"],
            check_rows,
        ),
        ("The retrain", ["", ""], retrain_rows),
        (
            "EASE's l2 on the retrain's snapshot: the validation NDCG@10 its search maximises "
            "(and the same weighing each target by its recency, the training's half-life), and "
            "the world's expected CTR@10 of the served fit's lists and of the measured fit's "
            "(1,000 users, as at the retrain)",
            ["l2", "valid NDCG@10", "recency-weighted", "expected CTR@10", "measured fit's"],
            sweep_rows,
        ),
        ("From the shift to the new champion, seconds", ["interval", "seconds"], timing),
        ("Runtime, seconds", ["phase", "seconds"], phase_rows),
    ]  # fmt: skip
    for heading, headers, rows in tables:
        print(f"\n{heading}\n{format_table(headers, rows)}")
    notes = [
        f"One service on the EASE champion, no experiment; windows of {plan.window} requests "
        f"(users drawn at random, {args.threads} client threads), at most one per {plan.pace:g} "
        f"s, each followed by {plan.organic} organic events (users drawn at random pick an "
        "unseen item by a softmax of their current utility, posted as `interaction` events, "
        "the history's type, not a click type).",
        f"Before window {plan.shift_at} the world permuted the latent vectors of "
        f"{outcome['moved_items']} of {world.config.num_items} items "
        f"(World.shift({plan.fraction:g})); popularity biases stay.",
        "Drift settings of every process: RECSYS_DRIFT_WINDOW_SECONDS="
        f"{plan.drift_window_s:g}, RECSYS_DRIFT_BASELINE_SECONDS={plan.baseline_s:g}, "
        f"RECSYS_DRIFT_MIN_SAMPLES={plan.min_samples}, RECSYS_DRIFT_COOLDOWN_SECONDS="
        f"{plan.cooldown_s:g}; thresholds the defaults (ctr_drop 0.2 and significant at p < 0.001, "
        "popularity_psi 0.2). The monitor is the real flow (`python -m flows monitor`) against "
        "a temporary Prefect server; the retrain is the deployment `retrain/nightly` (EASE, "
        "leave-one-out, margin 0) served by `python -m flows schedule`; the service picks the "
        "new champion up at its next poll (RECSYS_POLL_SECONDS=1). The retrain trains on the "
        f"events of the last {plan.train_window_days:g} days (RECSYS_TRAIN_WINDOW_DAYS): the "
        "history spans the 60 days before the run, so that is its newest eighth and every "
        "event of the run; the users' whole histories still feed the served lists. "
        + (
            "The gate's winner is refit on every event of that window (RECSYS_REFIT: the users' "
            "newest picks, held out by leave-one-out, included) and the refit serves. "
            if plan.refit
            else "The gate's winner serves as measured (no refit). "
        )
        + (
            f"Each user-item pair weighs 0.5 ** (age / {plan.half_life_s:g} s) in EASE "
            "(RECSYS_RECENCY_HALF_LIFE_DAYS, scaled to the run like the drift windows)."
            if plan.half_life_s
            else "Every pair weighs the same (no recency half-life)."
        ),
        "Interest wears out: clicks and organic picks are excluded from later lists, so the "
        "oracle's rate moves too; expected / oracle is the champion's share of what was "
        "possible, which the shift lowers and the retrain should restore. 'old champion' is "
        "the world's expected CTR of the lists the old champion (its ONNX graph, loaded by "
        "this script) gives the same users at the same moment, with the same exclusions: "
        "before the new champion it equals 'expected' (the check that the two agree), after "
        "it the recovery is the per-request difference, which the wear does not bias.",
    ]
    payload = {
        "args": {k: v for k, v in vars(args).items()},
        "plan": plan.report(),
        "world": world.config.report(),
        "home": offline,
        **outcome,
        "stretches": [
            {"stretch": row[0], "windows": int(row[1]), "ctr": row[3], "expected": row[4],
             "old_champion": row[5], "oracle": row[6], "expected_over_oracle": row[7]}
            for row in summary_rows(outcome, plan)
        ],
        "recovery": recovery(outcome, plan),
        "restored": restored(outcome, plan),
        "l2_sweep": outcome.get("l2_sweep", []),
        "seconds": {k: round(v, 1) for k, v in phases.items()},
    }  # fmt: skip
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    png = RESULTS_DIR / f"{name}-ctr.png"
    plot(outcome, plan, png)
    json_path, md_path = write_results(
        name, "Drift end to end: preferences shift, the monitor retrains", info, payload,
        tables, notes,
    )  # fmt: skip
    print(f"\nwrote {json_path}, {md_path}, {png}")


def _signal(check: dict[str, Any], name: str) -> str:
    s = check["signals"].get(name)
    if not s or s.get("value") is None:
        return "-" if not s else f"- ({s.get('n', 0):,})"
    return f"{s['value']:.3f} ({s['n']:,})" + (" tripped" if s.get("tripped") else "")


MARK_STYLE = {
    "shift": ("C3", "-", "shift"),
    "trip": ("C1", "--", "monitor tripped"),
    "retrain start": ("C4", ":", "retrain started"),
    "retrain done": ("C2", ":", "retrain finished"),
    "served": ("C2", "-", "new champion served"),
}


def plot(outcome: dict[str, Any], plan: Plan, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    windows = outcome["windows"]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(12, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]}
    )
    mid = [(w["start_s"] + w["end_s"]) / 2 for w in windows]
    bands = [proportion(w["clicked"], w["requests"]) for w in windows]
    top.plot(mid, [b.value for b in bands], "-o", ms=3, color="C0", label="observed CTR@10")
    top.fill_between(mid, _nan([b.low for b in bands]), _nan([b.high for b in bands]),
                     color="C0", alpha=0.15, lw=0)  # fmt: skip
    top.plot(mid, [w["expected"] for w in windows], "--", color="C0", lw=1,
             label="the world's expected CTR of the lists shown")  # fmt: skip
    top.plot(mid, [w["old_expected"] for w in windows], "-.", color="C3", lw=1,
             label="the same, for the old champion's lists")  # fmt: skip
    top.plot(mid, [w["oracle"] for w in windows], ":", color="grey", lw=1.2,
             label="oracle (each user's best unseen items)")  # fmt: skip
    for ax in (top, bottom):
        for key, (colour, style, label) in MARK_STYLE.items():
            if key in outcome["marks"]:
                ax.axvline(outcome["marks"][key], color=colour, ls=style, lw=1.2,
                           label=label if ax is top else None)  # fmt: skip
        ax.grid(True, alpha=0.3)
    top.set(ylabel="click-through at 10")
    top.set_ylim(bottom=0)
    top.legend(fontsize=7, loc="lower left", ncol=2)
    top.set_title(
        f"CTR per window of {plan.window} requests (95% band); World.shift({plan.fraction:g}) "
        "mid-run, the drift monitor and the retrain deployment on a Prefect server",
        fontsize=9,
    )
    checks = outcome["checks"]
    for name, colour, threshold in (("ctr_drop", "C1", 0.2), ("popularity_psi", "C5", 0.2)):
        points = [(c["at_s"], c["signals"].get(name, {}).get("value")) for c in checks]
        xs = [x for x, v in points if v is not None]
        ys = [v for _, v in points if v is not None]
        bottom.plot(xs, ys, "-s", ms=3, color=colour, label=f"{name} (threshold {threshold})")
    bottom.axhline(0.2, color="grey", ls="--", lw=0.8)
    bottom.set(xlabel="seconds since the first window", ylabel="monitor signal")
    bottom.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _nan(values: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else v for v in values]
