"""The scale benchmark at toy sizes: every stage runs, in its own process, and reports itself."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import _common
import scale

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

MAIN_STAGES = ["generate", "import", "extract", "split", "train", "evaluate", "export + register"]


def test_scale_benchmark_runs_every_stage_at_toy_sizes(
    postgres_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install wrk): the serving stage needs it")
    monkeypatch.setenv("RECSYS_BENCH_POSTGRES_URL", postgres_server)
    monkeypatch.setattr(_common, "RESULTS_DIR", tmp_path)
    argv = ["scale.py", "--users", "1500", "--items", "300", "--events", "20000"]
    argv += ["--big-users", "600", "--big-items", "2500", "--big-events", "8000"]
    argv += ["--ann-min-items", "2000", "--train-seconds", "3", "--big-train-seconds", "3"]
    argv += ["--eval-users", "400", "--big-eval-users", "300", "--serve-seconds", "1"]
    argv += ["--matmul-size", "256", "--serve-workers", "2"]
    monkeypatch.setattr(sys, "argv", [*argv, "--name", "toy"])
    scale.main()

    result = json.loads((tmp_path / "toy.json").read_text())
    stages = [(r["world"], r["stage"]) for r in result["rows"]]
    assert stages == [
        ("-", "matmul rate"),
        *[("main", s) for s in MAIN_STAGES],
        ("main", "serve"),
        ("main", "batch score"),
        *[("big", s) for s in MAIN_STAGES],
        ("big", "serve"),
    ]
    for row in result["rows"]:
        assert row["seconds"] > 0 and row["peak_rss"] > 10_000_000, row
    main, big = result["details"]["main"], result["details"]["big"]
    # The evaluation sample is what was asked for; below the threshold scoring is exact.
    assert main["pipeline"]["test"]["ndcg@10"]["value"] > 0
    assert main["pipeline"]["retrieval"] is None
    assert "400 sampled test users" in result["rows"][4]["detail"]
    # At or above it the version has an item index, checked on real test users.
    assert big["pipeline"]["retrieval"]["recall_at_10"] >= 0.95
    for world in (main, big):
        assert world["serving"]["errors"] == 0 and world["serving"]["requests"] > 0
        assert world["serving"]["p99_ms"] > 0
    # --serve-workers is the main world's; the 1M-item world has its own, 1 by default.
    assert main["serving"]["workers"] == 2 and big["serving"]["workers"] == 1
    assert main["serving"]["served"]["scoring"] == "exact"
    assert big["serving"]["served"]["scoring"] == "index"
    batch = result["details"]["batch"]
    assert batch["users"] == 1500 and batch["rows"] == 1500 * 10
    assert 0 < batch["matmul_share"] < batch["scoring_matmul_share"] < 1
    assert batch["prepare_seconds"] > 0 and batch["scoring_seconds"] > 0
    assert "batch scoring (forward pass flops" in (tmp_path / "toy.md").read_text()
