"""The CLI contract: tables by default, JSON as the last line, one-line errors, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
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


@pytest.mark.slow
def test_cli_demo_runs_end_to_end_and_leaves_nothing_running(tmp_path: Path) -> None:
    env = {"RECSYS_HOME": str(tmp_path / "home"), "RECSYS_DATABASE_URL": ""}
    args = ["--users", "300", "--items", "120", "--interactions", "6000", "--budget-seconds", "5"]
    result = _recsys("demo", *args, env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "migrated the database" in out
    assert "imported with the CSV importer: 6,000 new" in out
    assert "imported again with the CSV importer: 0 new, 6,000 already stored" in out
    assert "running the retrain flow" in out and "report: " in out
    # The retrain's progress while it trains: model, epoch, validation, time left.
    progress = [line for line in out.splitlines() if line.startswith("   sasrec: epoch ")]
    assert progress and "valid ndcg@10" in progress[0] and "s left of 5 s" in progress[0]
    assert out.index(progress[0]) < out.index(" v1 sasrec ")
    assert "recsys ui --port 8080" in out.split("nothing left running")[1]
    assert out.count(" v1 sasrec ") + out.count(" v2 gru4rec ") + out.count(" v3 ease ") == 3
    assert "anonymous session" in out and "fallback: popular" in out and "why #1" in out
    assert "stopped the service" in out
    url = out.split("started the service (BentoML) at ")[1].split()[0]
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthz", timeout=2)  # nothing left listening


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
    # Registered, exported with parity, and gated against popularity (the registry was empty).
    assert data["version"] == 1 and data["status"] == "ready"
    assert data["parity"]["passed"] is True  # type: ignore[index]
    assert data["gate"]["baseline"] == "popularity"  # type: ignore[index]
    assert data["champion"] == (1 if data["gate"]["promoted"] else None)  # type: ignore[index]


def test_cli_train_on_a_sample_of_evaluated_users(recsys_env: dict[str, str]) -> None:
    runner.invoke(
        app, ["generate", "synthetic", "--users", "150", "--items", "60", "--interactions", "2400"]
    )
    result = runner.invoke(app, ["train", "--model", "pop", "--eval-users", "40", "--json"])
    assert result.exit_code == 0, result.output
    data = _json_tail(result.stdout)
    assert data["evaluated_users"] == 40  # of 150 users evaluated without the sample
    assert data["split"]["sampled_users"] == 40  # type: ignore[index]
    result = runner.invoke(app, ["train", "--model", "pop", "--eval-users", "0"])
    assert result.exit_code != 0


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
        (["--model", "pop", "--window-days", "0"], "a training window must be positive"),
    ],
)
@pytest.mark.slow
def test_cli_train_bad_model_or_setting_is_one_line(
    recsys_env: dict[str, str], args: list[str], message: str
) -> None:
    result = _recsys("train", *args, env=recsys_env)
    assert result.returncode == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def _json_ok(*args: str) -> dict[str, Any]:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return _json_tail(result.stdout)  # type: ignore[return-value]


def test_cli_train_registers_then_models_list_show_promote_rollback(
    recsys_env: dict[str, str],
) -> None:
    runner.invoke(
        app, ["generate", "synthetic", "--users", "150", "--items", "60", "--interactions", "4000"]
    )
    first = _json_ok("train", "--model", "ease")
    assert first["gate"]["promoted"] is True and first["champion"] == 1
    second = _json_ok("train", "--model", "pop")
    assert second["version"] == 2 and second["gate"]["promoted"] is False
    assert second["gate"]["baseline"] == "champion v1" and second["champion"] == 1

    listed = _json_ok("models", "list")["versions"]
    assert [(v["version"], v["aliases"]) for v in listed] == [(2, []), (1, ["champion"])]
    table = runner.invoke(app, ["models", "list"])
    assert "champion" in table.stdout and "ease" in table.stdout

    # A refit carries its measured run's metrics; the listing says whose they are.
    from sqlalchemy import update

    from recsys.db.engine import create_engine
    from recsys.db.schema import model_versions_table

    store = create_engine(recsys_env["RECSYS_DATABASE_URL"])
    with store.begin() as conn:
        training = (
            conn.execute(model_versions_table.select().where(model_versions_table.c.version == 2))
            .one()
            ._mapping["training"]
        )
        conn.execute(
            update(model_versions_table)
            .where(model_versions_table.c.version == 2)
            .values(training={**training, "refit_of": 1})
        )
    store.dispose()
    rows = {
        line.split()[0]: line for line in runner.invoke(app, ["models", "list"]).stdout.splitlines()
    }
    assert rows["2"].endswith("refit of v1") and rows["1"].endswith("-")
    assert rows["version"].endswith("lineage")

    shown = _json_ok("models", "show", "2")
    assert shown["family"] == "pop" and shown["gate"]["diff"] < 0
    assert shown["snapshot"]["num_interactions"] == 4000 and shown["onnx_sha256"]

    moved = _json_ok("models", "promote", "v2", "--reason", "try popularity")
    assert (moved["from_version"], moved["to_version"]) == (1, 2)
    assert "recsys models promote" in moved["actor"] and moved["reason"] == "try popularity"
    back = _json_ok("models", "rollback")
    assert (back["from_version"], back["to_version"], back["action"]) == (2, 1, "rollback")
    history = _json_ok("models", "show", "champion")["alias_moves"]
    assert [m["action"] for m in history] == ["promote", "promote", "rollback"]

    again = runner.invoke(app, ["models", "rollback"])
    assert again.exit_code == 1 and "no earlier version" in again.output
    missing = runner.invoke(app, ["models", "show", "9"])
    assert missing.exit_code == 1 and "no registered model version 9" in missing.output

    evaluated = _json_ok("evaluate", "champion")
    assert evaluated["version"] == 1
    assert evaluated["metrics"]["ndcg@10"]["value"] == pytest.approx(
        first["metrics"]["ndcg@10"]["value"], abs=1e-6
    )


def test_cli_models_sweep_says_what_it_left_alone_and_how_to_sweep_it(
    recsys_env: dict[str, str],
) -> None:
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from recsys import registry
    from recsys.config import get_settings
    from recsys.db.engine import create_engine
    from recsys.db.schema import model_versions_table
    from recsys.registry import registration

    engine = create_engine(recsys_env["RECSYS_DATABASE_URL"])
    young = sorted(registration._reserve(engine, "ease", None) for _ in range(2))  # "running"
    old = registration._reserve(engine, "pop", None)  # crashed seven hours ago
    with engine.begin() as conn:
        conn.execute(
            update(model_versions_table)
            .where(model_versions_table.c.version == old)
            .values(created_at=datetime.now(UTC) - timedelta(hours=7))
        )
    models = get_settings().artifacts_dir / registry.MODELS_FOLDER
    (models / f".v{young[0]:06d}-ease.partial").mkdir(parents=True)

    note = (
        "2 pending registrations and 1 .partial folder younger than 6h left alone (may still"
        " be running); use --older-than-hours 0 to sweep them"
    )
    data = _json_ok("models", "sweep")
    assert data == {
        "abandoned_versions": 1,
        "removed_partial_folders": 0,
        "left_pending_versions": young,
        "left_partial_folders": 1,
        "older_than_hours": 6.0,
        "note": note,
    }
    table = runner.invoke(app, ["models", "sweep"])
    assert table.exit_code == 0 and note in table.stdout
    assert "abandoned_versions" in table.stdout  # nothing more to abandon: 0

    swept = _json_ok("models", "sweep", "--older-than-hours", "0")
    assert swept["abandoned_versions"] == 2 and swept["removed_partial_folders"] == 1
    assert swept["left_pending_versions"] == [] and swept["note"] is None
    quiet = runner.invoke(app, ["models", "sweep"])
    assert quiet.exit_code == 0 and "left alone" not in quiet.stdout
    help_text = runner.invoke(app, ["models", "sweep", "--help"]).stdout
    assert "default: 6" in help_text and "--older-than-hours" in help_text


RECOMMEND_WITHOUT_TORCH = """
import json, sys
from typer.testing import CliRunner
from recsys.cli import app
result = CliRunner().invoke(app, ["recommend", sys.argv[1], "-k", "5", "--json"])
assert result.exit_code == 0, result.output
print(json.dumps({"torch": "torch" in sys.modules, "out": result.stdout.splitlines()[-1]}))
"""


@pytest.mark.slow
def test_cli_recommend_scores_through_onnxruntime_without_torch(
    recsys_env: dict[str, str],
) -> None:
    missing = _recsys("recommend", "u1", env=recsys_env)
    assert missing.returncode == 1 and "there is no champion model yet" in missing.stderr

    runner.invoke(
        app, ["generate", "synthetic", "--users", "150", "--items", "60", "--interactions", "4000"]
    )
    _json_ok("train", "--model", "sasrec", "--epochs", "2", "--set", "max_len=20")
    runner.invoke(app, ["models", "promote", "1"])  # whatever the gate said
    done = subprocess.run(
        [sys.executable, "-c", RECOMMEND_WITHOUT_TORCH, "u3"],
        capture_output=True,
        text=True,
        env={**os.environ, **recsys_env},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["torch"] is False, "the recommend path imported torch"
    data = json.loads(report["out"])
    assert data["version"] == 1 and data["model"] == "sasrec" and data["fallback"] is None
    assert len(data["items"]) == 5
    assert all(row["title"].startswith("Item ") for row in data["items"])
    scores = [row["score"] for row in data["items"]]
    assert scores == sorted(scores, reverse=True)

    cold = _json_ok("recommend", "someone-new", "-k", "3")
    assert cold["fallback"] == "popular" and cold["known_user"] is False
    assert len(cold["items"]) == 3

    table = _recsys("recommend", "u3", "-k", "2", env=recsys_env)
    assert table.returncode == 0 and "sasrec v1" in table.stdout


RECOMMEND_THROUGH_THE_INDEX = """
import json, sys
from typer.testing import CliRunner
from recsys.cli import app
result = CliRunner().invoke(app, ["recommend", sys.argv[1], "-k", "5", "--json"])
assert result.exit_code == 0, result.output
loaded = [name for name in ("faiss", "torch") if name in sys.modules]
print(json.dumps({"loaded": loaded, "out": result.stdout.splitlines()[-1]}))
"""


@pytest.mark.slow
def test_cli_train_over_a_large_catalogue_recommends_through_the_item_index(
    recsys_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSYS_ANN_MIN_ITEMS", "1")  # every catalogue counts as large
    runner.invoke(
        app, ["generate", "synthetic", "--users", "150", "--items", "60", "--interactions", "4000"]
    )
    trained = _json_ok("train", "--model", "sasrec", "--epochs", "2", "--set", "max_len=20")
    index = trained["parity"]["retrieval"]
    assert trained["status"] == "ready" and index["passed"] and index["recall_at_10"] >= 0.95
    runner.invoke(app, ["models", "promote", "1"])
    done = subprocess.run(
        [sys.executable, "-c", RECOMMEND_THROUGH_THE_INDEX, "u3"],
        capture_output=True,
        text=True,
        env={**os.environ, **recsys_env},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["loaded"] == ["faiss"], "the index was not searched, or torch was loaded"
    data = json.loads(report["out"])
    assert data["version"] == 1 and data["fallback"] is None and len(data["items"]) == 5
    table = runner.invoke(app, ["models", "show", "1"])
    assert table.exit_code == 0 and "retrieval" in table.stdout


@pytest.mark.slow
def test_cli_retrain_and_batch_run_the_flows(recsys_env: dict[str, str]) -> None:
    runner.invoke(
        app, ["generate", "synthetic", "--users", "120", "--items", "50", "--interactions", "3000"]
    )
    result = _recsys("retrain", "--models", "pop,ease", "--json", env=recsys_env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["status"] == "promoted" and len(data["candidates"]) == 2
    assert Path(data["report_path"]).exists()

    table = _recsys("retrain", "--models", "pop,ease", env=recsys_env)
    assert table.returncode == 0 and "retrain skipped: no new data since champion" in table.stdout

    batch = _recsys("batch", "-k", "3", "--json", env=recsys_env)
    assert batch.returncode == 0, batch.stderr
    summary = json.loads(batch.stdout.strip().splitlines()[-1])
    assert summary["users"] == 120 and summary["rows"] == 360

    bad = _recsys("retrain", "--models", "bert4rec", env=recsys_env)
    assert bad.returncode == 1 and "unknown model 'bert4rec'" in bad.stderr
