"""The CLI contract: tables by default, JSON as the last line, one-line errors, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recsys.cli import app

runner = CliRunner()


def _json_tail(output: str) -> dict[str, object]:
    return json.loads(output.strip().splitlines()[-1])


def _recsys(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the installed console script as a user would."""
    exe = Path(sys.executable).with_name("recsys")
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=300
    )


def test_cli_generate_then_stats_json(recsys_env: dict[str, str]) -> None:
    result = runner.invoke(
        app,
        [
            "generate",
            "synthetic",
            "--users",
            "50",
            "--items",
            "40",
            "--interactions",
            "500",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert _json_tail(result.output)["rows_inserted"] == 500

    result = runner.invoke(app, ["stats", "--json"])
    assert result.exit_code == 0, result.output
    stats = _json_tail(result.output)
    assert (stats["users"], stats["items"], stats["interactions"]) == (50, 40, 500)
    assert sum(stats["interactions_by_event_type"].values()) == 500  # type: ignore[attr-defined]
    assert stats["first_occurred_at"] is not None


def test_cli_stats_quality_json(recsys_env: dict[str, str]) -> None:
    runner.invoke(
        app, ["generate", "synthetic", "--users", "30", "--items", "20", "--interactions", "200"]
    )
    result = runner.invoke(app, ["stats", "--quality", "--json"])
    assert result.exit_code == 0, result.output
    data = _json_tail(result.output)
    assert data["snapshot"]["num_interactions"] == 200  # type: ignore[index]
    assert data["quality"]["ok"] is True  # type: ignore[index]


def test_cli_import_sequences_reports_rejects_file(
    recsys_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "seq.txt"
    path.write_text("u1 a b\nlonely\nu2 b c\n")
    result = runner.invoke(app, ["import", "sequences", str(path), "--json"])
    assert result.exit_code == 0, result.output
    data = _json_tail(result.output)
    assert (data["rows_inserted"], data["rows_rejected"]) == (4, 1)
    assert data["rejects_by_reason"] == {"empty_sequence": 1}
    assert Path(str(data["rejects_file"])).read_text().count("\n") == 2  # header + one row

    strict = runner.invoke(app, ["import", "sequences", str(path), "--strict"])
    assert strict.exit_code == 1
    assert "--strict: 1 rows rejected" in strict.output


def test_cli_import_movielens_real_dataset_table(
    recsys_env: dict[str, str], shared_dataset: Callable[[str], Path]
) -> None:
    path = shared_dataset("ml-100k")
    result = runner.invoke(app, ["import", "movielens", str(path)])
    assert result.exit_code == 0, result.output
    assert "rows_inserted" in result.output and "100,000" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["import", "movielens", "/nonexistent/ml-100k"],
            "error: not a folder: /nonexistent/ml-100k",
        ),
        (["import", "sequences", "/nonexistent.txt"], "error: file not found: /nonexistent.txt"),
        (
            ["generate", "synthetic", "--users", "0"],
            "error: ",
        ),
    ],
)
def test_cli_user_errors_are_one_line_without_traceback(
    recsys_env: dict[str, str], args: list[str], message: str
) -> None:
    result = _recsys(*args, env=recsys_env)
    assert result.returncode == 1
    assert result.stderr.startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr + result.stdout


def test_cli_unmigrated_database_says_what_to_run(tmp_path: Path) -> None:
    env = {"RECSYS_HOME": str(tmp_path), "RECSYS_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    result = _recsys("stats", env=env)
    assert result.returncode == 1
    assert "run `recsys db upgrade`" in result.stderr
    upgraded = _recsys("db", "upgrade", "--json", env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    assert _json_tail(upgraded.stdout)["to"] is not None


def test_cli_unreachable_database_is_one_line(tmp_path: Path) -> None:
    env = {
        "RECSYS_HOME": str(tmp_path),
        "RECSYS_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
    }
    result = _recsys("stats", env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("error: database error:")
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_demo_runs_end_to_end(tmp_path: Path) -> None:
    env = {"RECSYS_HOME": str(tmp_path / "home"), "RECSYS_DATABASE_URL": ""}
    result = _recsys("demo", "--users", "300", "--items", "200", "--interactions", "6000", env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "migrated the database" in out
    assert "imported with the CSV importer: 6,000 new" in out
    assert "imported again with the CSV importer: 0 new, 6,000 already stored" in out
    assert (tmp_path / "home" / "recsys.db").exists()


def test_cli_train_prints_metrics_json_with_epochs_and_time(recsys_env: dict[str, str]) -> None:
    runner.invoke(
        app, ["generate", "synthetic", "--users", "120", "--items", "60", "--interactions", "2400"]
    )
    result = runner.invoke(
        app,
        [
            "train",
            "--model",
            "sasrec",
            "--split",
            "loo",
            "--epochs",
            "2",
            "--set",
            "max_len=20",
            "--set",
            "batch_size=64",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = _json_tail(result.stdout)  # the progress bar goes to stderr
    assert data["model"] == "sasrec" and data["protocol"] == "loo"
    assert data["epochs"] == 2
    assert data["params"]["max_len"] == 20  # type: ignore[index]
    assert data["train_config"]["batch_size"] == 64  # type: ignore[index]
    assert data["seconds"] > 0
    metrics = data["metrics"]
    assert set(metrics) >= {"ndcg@10", "ndcg@20", "hr@10", "hr@20", "mrr@10", "coverage@10"}  # type: ignore[arg-type]
    ndcg = metrics["ndcg@10"]  # type: ignore[index]
    assert ndcg["ci_low"] <= ndcg["value"] <= ndcg["ci_high"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "bert"], "unknown model 'bert'; choose from: pop, ease, mlp"),
        (
            ["--model", "sasrec", "--set", "heads=2"],
            "unknown setting 'heads' for sasrec; valid keys:",
        ),
        (["--model", "sasrec", "--set", "max_len=long"], "bad value 'long' for max_len"),
        (["--model", "sasrec", "--split", "random"], "unknown split 'random'"),
    ],
)
def test_cli_train_bad_model_or_setting_is_one_line(
    recsys_env: dict[str, str], args: list[str], message: str
) -> None:
    result = _recsys("train", *args, env=recsys_env)
    assert result.returncode == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
