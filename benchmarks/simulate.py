"""Experiments end to end: simulated users with hidden preferences against a running service.

The world (benchmarks/simworld.py) gives users and items latent vectors and items a
popularity bias; each user's history is drawn from their preferences and imported into a
fresh home. Three versions are trained on it: EASE (promoted champion, the good model),
popularity (the deliberately worse one) and a second EASE (same data and config, its own
version, for A/A). A real ``bentoml serve serving.service:RecsysService`` runs on that home
(``RECSYS_POLL_SECONDS=1``, a key with ``read`` and ``events``), and the script plays the
users over HTTP: each request is ``POST /recommend`` for a user drawn at random (with
replacement), the user clicks the answer according to the world's click model, and each
click is sent to ``POST /events`` naming the answer's ``recommendation_id``. The service
logs every answer as an impression; the numbers below are the library's own
(``experiment_status``), read once the log has written every answer.

1. **A/B**: ``start_experiment`` with the popularity version as challenger at share 0.5,
   ``--requests`` requests, then ``experiment_status`` once (no peeking) and ``stop
   --keep``; ``--ab-seeds`` such experiments in turn, each from its own seed. Target, each
   time: challenger minus champion click-through at 10 is negative with p < 0.05.
2. **A/A**: ``--aa-seeds`` experiments in turn, each with the second EASE as challenger (a
   new experiment, so a new salt and a new split of the users) and the same number of
   requests from its own seed. Reported: the false-positive rate (the share of p < 0.05)
   with its Wilson interval. Target: that interval contains 5%.

Also reported: each arm's click-through per window of ``--window`` requests (a plot and a
table), the rate the world itself expects for the lists each arm showed, the power the A/B
had at its size, and the same tests with users as the unit (the service's test counts
impressions as independent, but a user drawn twice is in the same arm twice).

    .venv/bin/python benchmarks/simulate.py            # about 4 minutes on 2 cores
    .venv/bin/python benchmarks/simulate.py --quick    # a smoke run, under a minute

A full run writes results/simulate.json, results/simulate.md and results/simulate-ctr.png;
``--quick`` writes results/simulate-smoke.*. A measurement, not a test: the script exits 0
whatever the verdicts.

Drift: ``Driver.before_window`` is called before each window of requests with the window's
number and the world; a drift scenario passes a callback that calls ``World.shift`` there
(no request is in flight at that moment).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _common import REPO_ROOT, RESULTS_DIR, format_table, machine_info, verdict, write_results
from serve import _on_terminate, bentoml_serve
from simworld import World, WorldConfig
from sqlalchemy import Engine, func, select

from recsys import registry
from recsys.data.ingest import ingest
from recsys.db.engine import create_engine
from recsys.db.migrate import upgrade
from recsys.db.schema import impressions_table
from recsys.keys import EVENTS, READ, create_key
from recsys.online.experiments import CHALLENGER_ARM, CHAMPION_ARM, get_experiment, start_experiment
from recsys.online.metrics import Z95, proportion
from recsys.online.outcomes import experiment_status, stop_experiment
from recsys.registry import registration

SOURCES = (
    "benchmarks/simulate.py",
    "benchmarks/simworld.py",
    "recsys/online",
    "serving/scorer.py",
    "serving/lifecycle.py",
    "serving/impressions.py",
)
ARMS = (CHAMPION_ARM, CHALLENGER_ARM)
ALPHA = 0.05
CLICK = "click"
WAIT_S = 30.0  # for the service to pick up an experiment, and for its impression log
REQUEST_TIMEOUT_S = 30.0
ATTRIBUTION_WINDOW_S = 3600.0
FULL = {"requests": 1000, "ab_seeds": 5, "aa_seeds": 40, "window": 50}
QUICK = {"requests": 300, "ab_seeds": 1, "aa_seeds": 3, "window": 50}
AA_SEEDS_FROM = 1000  # A/A run n uses request seed --seed + 1000 + n; A/B run n, --seed + 1 + n


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--requests", type=int, help=f"per experiment (default {FULL['requests']})")
    parser.add_argument("--ab-seeds", type=int, help=f"A/B runs (default {FULL['ab_seeds']})")
    parser.add_argument("--aa-seeds", type=int, help=f"A/A runs (default {FULL['aa_seeds']})")
    parser.add_argument("--window", type=int, help="requests per point of the CTR-over-time plot")
    parser.add_argument("--threads", type=int, default=4, help="concurrent simulated users")
    parser.add_argument("--k", type=int, default=10, help="list length requested and measured")
    parser.add_argument("--seed", type=int, default=0, help="the world's seed (requests: +1...)")
    parser.add_argument("--share", type=float, default=0.5, help="the challenger's share")
    parser.add_argument(
        "--drift",
        action="store_true",
        help="the drift scenario instead (benchmarks/simdrift.py): shift, monitor, retrain",
    )
    parser.add_argument("--shift-fraction", type=float, help="--drift: share of items moved")
    parser.add_argument("--organic", type=int, help="--drift: organic events per window")
    parser.add_argument(
        "--no-refit",
        action="store_true",
        help="--drift: serve the retrain's measured EASE, not its refit on every event",
    )
    parser.add_argument(
        "--half-life",
        type=float,
        help="--drift: the retrain's recency half-life in seconds (default 40; 0: none)",
    )
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if (
        min(args.requests - 2, args.ab_seeds - 1, args.aa_seeds, args.window - 1, args.threads - 1)
        < 0
    ):
        parser.error(
            "--requests >= 2, --ab-seeds >= 1, --aa-seeds >= 0, --window >= 1, --threads >= 1"
        )
    return args


# The home -----------------------------------------------------------------------------------


@dataclass
class Home:
    path: Path
    url: str
    engine: Engine
    versions: dict[str, int] = field(default_factory=dict)
    offline: dict[str, dict[str, Any]] = field(default_factory=dict)


ROLES = (("good", "ease"), ("worse", "pop"), ("good-again", "ease"))


def prepare_home(path: Path, world: World, roles: Sequence[tuple[str, str]] = ROLES) -> Home:
    """Import the world's histories; train and register each (role, model), by default EASE,
    pop and EASE again; the first is promoted champion."""
    from recsys.experiment import train_and_evaluate

    path.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{path / 'recsys.db'}"
    upgrade(create_engine(url))
    home = Home(path, url, create_engine(url))
    loaded = ingest(home.engine, world.import_batch(int(time.time() * 1000)), path / "rejects")
    print(f"imported {loaded.rows_inserted:,} history events", flush=True)
    for role, model in roles:
        started = time.perf_counter()
        outcome = train_and_evaluate(
            create_engine(url), model, "loo", train_overrides={"threads": 1, "progress": False}
        )
        record = registration.register(home.engine, outcome, artifacts_dir=path / "artifacts")
        if record.status != registry.SERVABLE:
            raise SystemExit(f"{model} v{record.version} is not servable: {record.error}")
        summary = outcome.test.summary()
        home.versions[role] = record.version
        home.offline[role] = {
            "model": model,
            "version": record.version,
            "train_seconds": round(time.perf_counter() - started, 1),
            **{m: summary.get(m, {}).get("value") for m in ("ndcg@10", "hr@10")},
        }
        print(f"{role}: {model} v{record.version} {home.offline[role]}", flush=True)
    first = home.versions[roles[0][0]]
    registry.promote(home.engine, first, actor="simulator", reason="the good one")
    return home


# Simulated users ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Shown:
    """One request: what the service answered and what the simulated user did with it."""

    index: int
    user_id: str
    arm: str | None
    model_version: int
    recommendation_id: str
    items: list[str]
    clicks: list[str]
    duplicates: int  # clicks the service stored as duplicates of an earlier event
    expected_ctr: float


class Driver:
    """Plays the world's users against a service over HTTP, ``threads`` at a time.

    Requests go in windows of ``window``; ``before_window(number, world)``, when given, runs
    before each window with no request in flight (the place to change the world mid-run).
    """

    def __init__(
        self,
        base: str,
        secret: str,
        world: World,
        *,
        k: int,
        threads: int,
        window: int,
        before_window: Callable[[int, World], None] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base = base
        self.world = world
        self.k = k
        self.window = window
        self.before_window = before_window
        self.client = httpx.Client(
            base_url=base,
            headers={"Authorization": f"Bearer {secret}"},
            timeout=REQUEST_TIMEOUT_S,
            limits=httpx.Limits(max_connections=threads),
            transport=transport,
        )
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sim-user")

    def close(self) -> None:
        self.pool.shutdown()
        self.client.close()

    def run(self, requests: int, seed: int) -> list[Shown]:
        """``requests`` answers for users drawn at random (seeded), clicked and reported."""
        users = np.random.default_rng([seed, 0]).integers(0, len(self.world.user_ids), requests)
        out: list[Shown] = []
        for start in range(0, requests, self.window):
            if self.before_window is not None:
                self.before_window(start // self.window, self.world)
            indices = range(start, min(start + self.window, requests))
            jobs = [
                self.pool.submit(self._one, n, self.world.user_ids[int(users[n])], seed)
                for n in indices
            ]
            out += [job.result() for job in jobs]
        return out

    def _one(self, index: int, user_id: str, seed: int) -> Shown:
        answer = self._post("/recommend", {"user_id": user_id, "k": self.k})
        items = [str(item["item_id"]) for item in answer["items"]]
        rng = np.random.default_rng([seed, 1, index])  # the same clicks whatever the timing
        clicks = self.world.clicks(user_id, items, rng)
        rid = str(answer["recommendation_id"])
        duplicates = 0
        if clicks:
            events = [
                {"user_id": user_id, "item_id": i, "event_type": CLICK, "recommendation_id": rid}
                for i in clicks
            ]
            duplicates = int(self._post("/events", {"events": events})["duplicates"])
        return Shown(
            index=index,
            user_id=user_id,
            arm=answer.get("arm"),
            model_version=int(answer["model_version"]),
            recommendation_id=rid,
            items=items,
            clicks=clicks,
            duplicates=duplicates,
            expected_ctr=self.world.expected_ctr(user_id, items),
        )

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.client.post(path, json=body)
        if response.status_code != 200:
            raise RuntimeError(f"POST {path}: {response.status_code} {response.text[:300]}")
        out: dict[str, Any] = response.json()
        return out

    def served_experiment(self) -> int | None:
        response = self.client.get("/model")
        response.raise_for_status()
        value = response.json().get("experiment_id")
        return None if value is None else int(value)

    def wait_for_experiment(self, experiment_id: int | None) -> float:
        """Until the service routes by ``experiment_id`` (None: by none); seconds waited."""
        started = time.monotonic()
        while self.served_experiment() != experiment_id:
            if time.monotonic() - started > WAIT_S:
                raise RuntimeError(f"the service did not pick up experiment {experiment_id}")
            time.sleep(0.1)
        return time.monotonic() - started


def wait_for_impressions(engine: Engine, experiment_id: int, expected: int) -> float:
    """Until the impression log has written ``expected`` answers of the experiment."""
    started = time.monotonic()
    query = (
        select(func.count())
        .select_from(impressions_table)
        .where(impressions_table.c.experiment_id == experiment_id)
    )
    while True:
        with engine.connect() as conn:
            written = int(conn.execute(query).scalar_one())
        if written >= expected:
            return time.monotonic() - started
        if time.monotonic() - started > WAIT_S:
            raise RuntimeError(f"{written} of {expected} impressions written after {WAIT_S:.0f}s")
        time.sleep(0.2)


# One experiment -----------------------------------------------------------------------------


def run_experiment(
    home: Home,
    driver: Driver,
    *,
    label: str,
    challenger: int,
    share: float,
    requests: int,
    seed: int,
    k: int,
) -> dict[str, Any]:
    """Start, drive ``requests`` requests, measure once, stop with ``keep``; the numbers."""
    started = time.perf_counter()
    experiment = start_experiment(
        home.engine, challenger, share, actor="simulator", reason=f"simulate.py {label}"
    )
    pickup_s = driver.wait_for_experiment(experiment.id)
    driving = time.perf_counter()
    shown = driver.run(requests, seed)
    drive_s = time.perf_counter() - driving
    outside = [s for s in shown if s.arm not in ARMS]
    if outside:
        raise RuntimeError(f"{len(outside)} answers outside experiment {experiment.id}")
    flush_s = wait_for_impressions(home.engine, experiment.id, len(shown))
    status = experiment_status(
        home.engine,
        get_experiment(home.engine, experiment.id),
        click_events=[CLICK],
        conversion_events=["purchase"],
        window_seconds=ATTRIBUTION_WINDOW_S,
        k=k,
    )
    stop_experiment(
        home.engine, "keep", actor="simulator", reason=f"simulate.py {label}", status=status
    )
    ctr = status.differences[0]
    arms: dict[str, Any] = {}
    for arm in ARMS:
        mine = [s for s in shown if s.arm == arm]
        server = status.arms.get(arm)
        arms[arm] = {
            "model_version": server.model_version if server else None,
            "impressions": server.impressions if server else 0,
            "ctr": server.ctr.report() if server else None,
            "requests": len(mine),
            "clicked": sum(1 for s in mine if s.clicks),
            "clicks": sum(len(s.clicks) for s in mine),
            # An event is (user, item, type, time in ms): a second click on one item by one
            # user within the same millisecond (two lists answered at once) is not stored.
            "duplicates": sum(s.duplicates for s in mine),
            "clicked_stored": sum(1 for s in mine if len(s.clicks) > s.duplicates),
            "expected_ctr": _mean([s.expected_ctr for s in mine]),
            "users": len({s.user_id for s in mine}),
        }
    agree = all(
        arms[arm]["impressions"] == arms[arm]["requests"]
        and arms[arm]["ctr"] is not None
        and round(arms[arm]["ctr"]["value"] * arms[arm]["impressions"])
        == arms[arm]["clicked_stored"]
        for arm in ARMS
    )
    result: dict[str, Any] = {
        "label": label,
        "experiment_id": experiment.id,
        "salt": experiment.salt,
        "champion_version": experiment.champion_version,
        "challenger_version": challenger,
        "requests": requests,
        "seed": seed,
        "arms": arms,
        "difference": ctr.report(),
        "user_level": user_level_test(shown),
        "server_matches_client": agree,
        "windows": windows(shown, driver.window),
        "seconds": {
            "pickup": round(pickup_s, 2),
            "requests": round(drive_s, 2),
            "flush": round(flush_s, 2),
            "total": round(time.perf_counter() - started, 2),
            "requests_per_s": round(requests / drive_s, 1),
        },
    }
    d = result["difference"]
    print(
        f"{label:>10}  exp #{experiment.id}  champion {_pct(d['a'])} (n {d['n_a']})  "
        f"challenger {_pct(d['b'])} (n {d['n_b']})  diff {_signed(d['diff'])} "
        f"[{_signed(d['ci_low'])}, {_signed(d['ci_high'])}]  p {_p(d['p_value'])}  "
        f"({drive_s:.1f}s, {requests / drive_s:.0f} req/s; server=client: {agree})",
        flush=True,
    )
    return result


def windows(shown: Sequence[Shown], size: int) -> list[dict[str, Any]]:
    """Per window of ``size`` requests and arm: answers, answers clicked, expected CTR."""
    out = []
    for start in range(0, len(shown), size):
        part = shown[start : start + size]
        row: dict[str, Any] = {"from": start, "to": start + len(part)}
        for arm in ARMS:
            mine = [s for s in part if s.arm == arm]
            row[arm] = {
                "n": len(mine),
                "clicked": sum(1 for s in mine if s.clicks),
                "expected": sum(s.expected_ctr for s in mine),
            }
        out.append(row)
    return out


def user_level_test(shown: Sequence[Shown]) -> dict[str, Any]:
    """Challenger minus champion CTR with users as the unit (a user's answers are not
    independent): each arm's rate is clicked / answers over its users, its variance from the
    delta method for a ratio of per-user sums; a two-sided z-test."""
    stats = {}
    for arm in ARMS:
        per_user: dict[str, list[int]] = {}
        for s in shown:
            if s.arm == arm:
                per_user.setdefault(s.user_id, []).append(1 if s.clicks else 0)
        clicked = np.array([sum(v) for v in per_user.values()], dtype=np.float64)
        answers = np.array([len(v) for v in per_user.values()], dtype=np.float64)
        users = len(answers)
        if users < 2:
            return {"diff": None, "p_value": None}
        rate = clicked.sum() / answers.sum()
        residual = clicked - rate * answers
        variance = float(np.sum(residual**2)) / (answers.mean() ** 2) / users / (users - 1)
        stats[arm] = (rate, variance, users)
    (ra, va, _), (rb, vb, _) = stats[CHAMPION_ARM], stats[CHALLENGER_ARM]
    diff, se = rb - ra, math.sqrt(va + vb)
    p = 1.0 if se == 0 else math.erfc(abs(diff) / se / math.sqrt(2))
    return {
        "diff": round(float(diff), 6),
        "ci_low": round(float(diff - Z95 * se), 6),
        "ci_high": round(float(diff + Z95 * se), 6),
        "p_value": round(p, 6),
        "users": {arm: stats[arm][2] for arm in ARMS},
        "mean_answers_per_user": round(len(shown) / len({s.user_id for s in shown}), 2),
    }


def power(pa: float, pb: float, n_a: int, n_b: int) -> float:
    """The chance a two-sided z-test at ALPHA finds ``pb - pa`` with these arm sizes."""
    se = math.sqrt(pa * (1 - pa) / n_a + pb * (1 - pb) / n_b)
    if se == 0:
        return 1.0
    shift = abs(pb - pa) / se
    z = _z(1 - ALPHA / 2)
    return _phi(shift - z) + _phi(-shift - z)


def requests_for_power(pa: float, pb: float, target: float, share: float) -> int | None:
    """Total requests (split ``share`` to the challenger) for ``target`` power."""
    if pa == pb:
        return None
    z = _z(1 - ALPHA / 2) + _z(target)
    variance = pa * (1 - pa) / (1 - share) + pb * (1 - pb) / share
    return math.ceil(z * z * variance / (pb - pa) ** 2)


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def _z(q: float) -> float:
    """The standard normal quantile (bisection; enough for a report)."""
    low, high = -10.0, 10.0
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if _phi(mid) < q else (low, mid)
    return (low + high) / 2


def _mean(values: Sequence[float]) -> float | None:
    return round(float(np.mean(values)), 6) if values else None


# Report -------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}pp"


def _p(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1e-6:  # the service reports p to 6 decimals
        return "< 1e-6"
    return f"{value:.1e}" if value < 1e-3 else f"{value:.3f}"


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _interval(estimate: dict[str, Any] | None) -> str:
    if not estimate or estimate["value"] is None:
        return "-"
    return f"{_pct(estimate['value'])} [{_pct(estimate['ci_low'])}, {_pct(estimate['ci_high'])}]"


Table = tuple[str, list[str], list[list[str]]]


def ab_found(run: dict[str, Any]) -> bool:
    """The A/B's target: the challenger is worse with p < ALPHA."""
    d = run["difference"]
    return d["p_value"] is not None and d["p_value"] < ALPHA and d["diff"] < 0


def ab_tables(ab: Sequence[dict[str, Any]], home: Home, share: float) -> list[Table]:
    names = {v: home.offline[role]["model"] for role, v in home.versions.items()}
    first = ab[0]
    arm_rows = []
    for arm in ARMS:
        a = first["arms"][arm]
        arm_rows.append(
            [
                arm,
                f"v{a['model_version']} ({names.get(a['model_version'], '?')})",
                f"{a['impressions']:,}",
                f"{a['users']:,}",
                _interval(a["ctr"]),
                _pct(a["expected_ctr"]),
            ]
        )
    run_rows = []
    for run in ab:
        d, u = run["difference"], run["user_level"]
        pa = run["arms"][CHAMPION_ARM]["expected_ctr"]
        pb = run["arms"][CHALLENGER_ARM]["expected_ctr"]
        run_rows.append(
            [
                f"#{run['experiment_id']} (seed {run['seed']})",
                f"{d['n_a']:,} / {d['n_b']:,}",
                f"{_pct(d['a'])} / {_pct(d['b'])}",
                _signed(d["diff"]),
                f"[{_signed(d['ci_low'])}, {_signed(d['ci_high'])}]",
                _p(d["p_value"]),
                _p(u["p_value"]),
                "-" if pa is None or pb is None else f"{power(pa, pb, d['n_a'], d['n_b']):.3f}",
                verdict(ab_found(run)),
            ]
        )
    pa = float(np.mean([r["arms"][CHAMPION_ARM]["expected_ctr"] for r in ab]))
    pb = float(np.mean([r["arms"][CHALLENGER_ARM]["expected_ctr"] for r in ab]))
    found = sum(ab_found(r) for r in ab)
    summary_rows = [
        [
            f"{found} of {len(ab)}",
            f"{_pct(pa)} vs {_pct(pb)}",
            _count(requests_for_power(pa, pb, 0.8, share)),
            _count(requests_for_power(pa, pb, 0.95, share)),
        ]
    ]
    return [
        (
            f"A/B: EASE (champion) against popularity (challenger), experiment "
            f"#{first['experiment_id']}",
            ["arm", "version", "impressions", "users", "CTR@10 [95% CI]", "expected CTR@10"],
            arm_rows,
        ),
        (
            "A/B: challenger - champion, each experiment tested once at its end",
            [
                "experiment",
                "n (champion / challenger)",
                "CTR",
                "diff",
                "95% CI",
                "p",
                "p (users)",
                "power",
                "p < 0.05, champion better",
            ],
            run_rows,
        ),
        (
            "A/B: how often, and the size it needs",
            [
                "found",
                "expected CTR (champion vs challenger)",
                "N for 80% power",
                "N for 95% power",
            ],
            summary_rows,
        ),
    ]


def aa_summary(aa: Sequence[dict[str, Any]]) -> dict[str, Any]:
    p_values = [r["difference"]["p_value"] for r in aa]
    user_p = [r["user_level"]["p_value"] for r in aa]
    hits = sum(1 for p in p_values if p is not None and p < ALPHA)
    user_hits = sum(1 for p in user_p if p is not None and p < ALPHA)
    rate = proportion(hits, len(aa))
    user_rate = proportion(user_hits, len(aa))
    return {
        "runs": len(aa),
        "false_positives": hits,
        "false_positive_rate": rate.report(),
        "user_level_false_positives": user_hits,
        "user_level_false_positive_rate": user_rate.report(),
        "p_values": p_values,
        "user_level_p_values": user_p,
        "mean_p": _mean([p for p in p_values if p is not None]),
        "target_met": rate.low is not None and rate.low <= ALPHA,
    }


def aa_tables(
    aa: Sequence[dict[str, Any]], summary: dict[str, Any]
) -> list[tuple[str, list[str], list[list[str]]]]:
    rows = [
        [
            f"#{r['experiment_id']} (seed {r['seed']})",
            f"{r['difference']['n_a']:,}",
            f"{r['difference']['n_b']:,}",
            _pct(r["difference"]["a"]),
            _pct(r["difference"]["b"]),
            _signed(r["difference"]["diff"]),
            _p(r["difference"]["p_value"]),
            _p(r["user_level"]["p_value"]),
        ]
        for r in aa
    ]
    rate, user_rate = summary["false_positive_rate"], summary["user_level_false_positive_rate"]
    summary_rows = [
        [
            "impressions (the service's test)",
            f"{summary['false_positives']} of {summary['runs']}",
            _interval(rate),
            verdict(summary["target_met"]),
        ],
        [
            "users (delta method)",
            f"{summary['user_level_false_positives']} of {summary['runs']}",
            _interval(user_rate),
            "-",
        ],
    ]
    return [
        (
            "A/A: EASE against a second EASE version, one experiment per seed",
            [
                "experiment",
                "n champion",
                "n challenger",
                "CTR champion",
                "CTR challenger",
                "diff",
                "p",
                "p (users)",
            ],
            rows,
        ),
        (
            "A/A: false-positive rate (p < 0.05)",
            ["unit", "p < 0.05", "rate [95% CI]", "CI contains 5%"],
            summary_rows,
        ),
    ]


def over_time(ab: Sequence[dict[str, Any]], aa: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per window and arm, pooled over the runs of each kind: answers, clicked, expected."""
    out = []
    for n, w in enumerate(ab[0]["windows"]):
        row: dict[str, Any] = {"from": w["from"], "to": w["to"]}
        for kind, runs in (("ab", ab), ("aa", aa)):
            for arm in ARMS:
                parts = [r["windows"][n][arm] for r in runs if n < len(r["windows"])]
                answers = sum(p["n"] for p in parts)
                row[f"{kind}_{arm}"] = {
                    "n": answers,
                    "ctr": _rate(sum(p["clicked"] for p in parts), answers),
                    "expected": _rate(sum(p["expected"] for p in parts), answers),
                }
        out.append(row)
    return out


def _rate(numerator: float, n: int) -> float | None:
    return None if n == 0 else round(numerator / n, 6)


def plot(
    ab: Sequence[dict[str, Any]],
    aa: Sequence[dict[str, Any]],
    series: Sequence[dict[str, Any]],
    path: Path,
    title: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    ends = [row["to"] for row in series]
    names = {"ab": ("EASE", "popularity"), "aa": ("EASE", "EASE, 2nd version")}
    for ax, kind, runs in ((axes[0], "ab", ab), (axes[1], "aa", aa)):
        for n, arm in enumerate(ARMS):
            colour = f"C{n}"
            cells = [row[f"{kind}_{arm}"] for row in series]
            bands = [proportion(round((c["ctr"] or 0) * c["n"]), c["n"]) for c in cells]
            label = f"{arm} ({names[kind][n]})"
            ax.plot(ends, _nan([c["ctr"] for c in cells]), "-o", ms=3, color=colour, label=label)
            ax.fill_between(
                ends,
                _nan([b.low for b in bands]),
                _nan([b.high for b in bands]),
                color=colour,
                alpha=0.15,
                lw=0,
            )
            ax.plot(
                ends,
                _nan([c["expected"] for c in cells]),
                "--",
                color=colour,
                lw=1,
                label=f"{arm}: the world's expected rate",
            )
        what = "A/B, EASE vs popularity" if kind == "ab" else "A/A, EASE vs EASE"
        pooled = f"{len(runs)} runs pooled" if len(runs) > 1 else "1 run"
        ax.set_title(f"{what}: CTR@10 per window, {pooled} (95% band)", fontsize=9)
        ax.set(xlabel="requests sent in the experiment", ylabel="click-through at 10")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    right = axes[2]
    p_values = sorted(
        r["difference"]["p_value"] for r in aa if r["difference"]["p_value"] is not None
    )
    if p_values:
        uniform = [(i + 0.5) / len(p_values) for i in range(len(p_values))]
        right.plot(uniform, p_values, "o", ms=4, label=f"A/A p-values, sorted ({len(p_values)})")
        right.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="uniform (a sound test)")
        right.axhline(ALPHA, color="C3", lw=0.8, ls=":", label="0.05")
    right.set(xlabel="uniform quantile", ylabel="p-value", xlim=(0, 1), ylim=(0, 1))
    right.set_title("A/A p-values against the uniform", fontsize=9)
    right.grid(True, alpha=0.3)
    right.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _nan(values: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else v for v in values]


# Main ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.drift:
        from simdrift import run_drift

        run_drift(args)
        return
    started = time.perf_counter()
    info = machine_info(SOURCES)
    info["load_average"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    world = World(WorldConfig(seed=args.seed))
    phases: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="recsys_bench_simulate_") as scratch:
        home = prepare_home(Path(scratch) / "home", world)
        phases["home (import, train 3 versions)"] = time.perf_counter() - started
        secret, _ = create_key(home.engine, f"simulator-{os.getpid()}", [READ, EVENTS])
        env = {k: v for k, v in os.environ.items() if k != "RECSYS_MODEL_SOURCE"} | {
            "RECSYS_HOME": str(home.path),
            "RECSYS_DATABASE_URL": home.url,
            "RECSYS_POLL_SECONDS": "1",
            "RECSYS_IMPRESSION_FLUSH_SECONDS": "1",  # impressions readable within a window
            "PYTHONPATH": os.pathsep.join(
                [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
        }
        mark = time.perf_counter()
        with bentoml_serve("serving.service:RecsysService", env, home.path / "serve.log") as srv:
            phases["service start"] = time.perf_counter() - mark
            driver = Driver(
                srv.base, secret, world, k=args.k, threads=args.threads, window=args.window
            )
            try:
                mark = time.perf_counter()
                ab = [
                    run_experiment(
                        home,
                        driver,
                        label=f"A/B {n + 1}",
                        challenger=home.versions["worse"],
                        share=args.share,
                        requests=args.requests,
                        seed=args.seed + 1 + n,
                        k=args.k,
                    )
                    for n in range(args.ab_seeds)
                ]
                phases[f"A/B experiments ({args.ab_seeds})"] = time.perf_counter() - mark
                mark = time.perf_counter()
                aa = [
                    run_experiment(
                        home,
                        driver,
                        label=f"A/A {n + 1}",
                        challenger=home.versions["good-again"],
                        share=args.share,
                        requests=args.requests,
                        seed=args.seed + AA_SEEDS_FROM + n,
                        k=args.k,
                    )
                    for n in range(args.aa_seeds)
                ]
                phases[f"A/A experiments ({args.aa_seeds})"] = time.perf_counter() - mark
            finally:
                driver.close()
        home.engine.dispose()
    phases["total"] = time.perf_counter() - started
    report(args, info, world, home, ab, aa, phases)


def report(
    args: argparse.Namespace,
    info: dict[str, Any],
    world: World,
    home: Home,
    ab: list[dict[str, Any]],
    aa: list[dict[str, Any]],
    phases: dict[str, float],
) -> None:
    name = "simulate-smoke" if args.quick else "simulate"
    summary = aa_summary(aa)
    series = over_time(ab, aa)
    home_rows = [
        [
            role,
            v["model"],
            f"v{v['version']}",
            _fixed(v["ndcg@10"]),
            _fixed(v["hr@10"]),
            f"{v['train_seconds']:.1f}",
        ]
        for role, v in home.offline.items()
    ]
    time_rows = [
        [f"{row['from']}-{row['to']}"]
        + [_pct(row[f"{kind}_{arm}"]["ctr"]) for kind in ("ab", "aa") for arm in ARMS]
        for row in series
    ]
    runs = [*ab, *aa]
    speed = [r["seconds"]["requests_per_s"] for r in runs]
    phase_rows = [[phase, f"{seconds:.1f}"] for phase, seconds in phases.items()]
    phase_rows.append(["per experiment (min-max)", _range([r["seconds"]["total"] for r in runs])])
    phase_rows.append(["requests/s while driving (min-max)", _range(speed, "{:.0f}")])
    agree = all(r["server_matches_client"] for r in runs)
    duplicates = sum(r["arms"][arm]["duplicates"] for r in runs for arm in ARMS)
    clicks = sum(r["arms"][arm]["clicks"] for r in runs for arm in ARMS)
    tables = [
        (
            "The home: offline test (leave-one-out) of the three versions",
            ["role", "model", "version", "ndcg@10", "hr@10", "train s"],
            home_rows,
        ),
        *ab_tables(ab, home, args.share),
        *(aa_tables(aa, summary) if aa else []),
        (
            f"CTR@10 over time (windows of {args.window} requests, runs of each kind pooled)",
            ["requests", "A/B champion", "A/B challenger", "A/A champion", "A/A challenger"],
            time_rows,
        ),
        ("Runtime, seconds", ["phase", "seconds"], phase_rows),
    ]
    for heading, headers, rows in tables:
        print(f"\n{heading}\n{format_table(headers, rows)}")
    config = world.config
    notes = [
        f"World: {config.num_users} users, {config.num_items} items, latent dim {config.dim}, "
        f"utility s = {config.taste:g} * <x_u, y_i> + b_i with b_i ~ N(0, {config.popularity:g}^2);"
        f" histories of about {config.history_mean:g} items drawn by softmax(s); a shown item at "
        f"rank r is clicked with probability r^-{config.position_decay:g} * "
        f"sigmoid({config.click_offset:g} + {config.click_scale:g} * s) "
        "(benchmarks/simworld.py).",
        f"Each experiment: {args.requests} requests for users drawn uniformly with replacement, "
        f"{args.threads} client threads, challenger share {args.share:g}; clicks sent to "
        "/events naming the recommendation_id; measured once, after the impression log wrote "
        "every answer, with experiment_status (ctr@10: two-proportion z-test over "
        "impressions); stopped with keep.",
        "Expected CTR: the world's own chance of at least one click on each list the arm "
        "showed, averaged (what the observed rate estimates). Power: of that z-test at the "
        "run's arm sizes, given those expected rates; N for a power: total requests.",
        "p (users): the same difference with users as the unit (each arm's rate as a ratio of "
        "per-user sums, its variance by the delta method), since a user drawn twice is in the "
        "same arm both times; it shows whether counting impressions as independent misleads.",
        "Server and client counts agree (impressions = requests; clicked impressions = answers "
        "with a click the service stored) in every experiment: "
        f"{agree}. The service stored {duplicates} of the {clicks:,} clicks as duplicates: an "
        "event is (user, item, type, time in ms), so a user clicking one item in two lists "
        "answered at once, within the same millisecond, counts once.",
        "The experiments run in turn on one home and one service: clicks become events, so "
        "later ones see longer histories (the service excludes seen items; EASE reads the live "
        "history). The A/B runs come first.",
    ]
    payload = {
        "args": vars(args),
        "world": config.report(),
        "home": home.offline,
        "ab": ab,
        "ab_found": sum(ab_found(r) for r in ab),
        "aa": aa,
        "aa_summary": summary,
        "over_time": series,
        "seconds": {k: round(v, 1) for k, v in phases.items()},
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    png = RESULTS_DIR / f"{name}-ctr.png"
    title = (
        f"benchmarks/simulate.py: {args.requests} requests per experiment, "
        f"{len(ab)} A/B and {len(aa)} A/A experiments"
    )
    plot(ab, aa, series, png, title)
    json_path, md_path = write_results(
        name, "Experiments end to end: simulated users", info, payload, tables, notes
    )
    print(f"\nwrote {json_path}, {md_path}, {png}")


def _fixed(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _range(values: Sequence[float], form: str = "{:.1f}") -> str:
    return f"{form.format(min(values))}-{form.format(max(values))}" if values else "-"


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _on_terminate)
    signal.signal(signal.SIGHUP, _on_terminate)
    main()
