"""The serving benchmark's load generator and report: wrk with benchmarks/serve.lua against a
real `bentoml serve` of the no-op service (one worker and two), the full collections read
from its /metrics, and targets judged per process layout."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import serve as bench

from recsys.cli.runner import serve_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_wrk_drives_the_noop_service_and_its_collections_are_read(
    tmp_path: Path, workers: int
) -> None:
    if bench.WRK is None:
        pytest.fail("wrk is not installed (apt-get install wrk): .ci/run installs it")
    users = tmp_path / "users.txt"
    users.write_text("u1\nu2\n")
    bench.API_KEY_HEADER["Authorization"] = "Bearer not-checked-by-the-noop"
    env = serve_env(workers, {**bench.os.environ, "PYTHONPATH": str(ROOT)})
    target = "benchmarks/serve_variants.py:NoopService"
    with bench.bentoml_serve(target, env, tmp_path / "serve.log") as running:
        assert len(bench._descendants(running.process.pid)) >= workers
        before = bench.gc_pauses(running.base)
        measured = bench.wrk_loop(
            running.base,
            bench.VARIANTS["noop-async"],
            users,
            bench.WRK_SCRIPT,
            4,
            warmup=0,
            duration=1.0,
            k=10,
            seed=0,
            server_pid=running.process.pid,
        )
    assert before is not None and before[0] >= 0  # the noop exports recsys's GC metric
    assert measured.errors == 0 and len(measured.latencies_ms) > 50
    assert all(0 < ms < 30_000 for ms in measured.latencies_ms)
    assert measured.gc is not None and measured.server_cpu_s is not None


def _point(variant: str, req_per_s: float, p99: float, workers: int, tuning: str) -> bench.Point:
    return bench.Point(
        variant=variant,
        concurrency=bench.TARGET_CONCURRENCY,
        seconds=10,
        requests=int(req_per_s * 10),
        errors=0,
        req_per_s=req_per_s,
        p50_ms=p99 / 3,
        p95_ms=p99 / 2,
        p99_ms=p99,
        mean_ms=p99 / 3,
        max_ms=p99,
        client_cpu_pct=5,
        server_cpu_pct=90,
        workers=workers,
        tuning=tuning,
    )


def test_targets_are_judged_per_layout_against_that_layouts_noop() -> None:
    points = [
        _point("noop-async", 1000, 20, 1, "none"),
        _point("recommend", 700, 180, 1, "none"),
        _point("noop-async", 1000, 20, 2, "default"),
        _point("recommend", 850, 30, 2, "default"),
    ]
    targets = bench.evaluate_targets(points, bench.WRK_NOOP_SHARE)
    verdicts = {
        (t["workers"], t["tuning"], t["target"]): t["verdict"]
        for t in targets
        if t["verdict"] != "n/a"
    }
    assert verdicts == {
        (1, "none", "recommend throughput vs noop"): "FAIL",  # 70% < 80%
        (1, "none", "recommend p99 latency"): "FAIL",
        (2, "default", "recommend throughput vs noop"): "PASS",
        (2, "default", "recommend p99 latency"): "PASS",
    }
    assert points[1].server_cpu_ms == pytest.approx(10 * 90 / 700)
