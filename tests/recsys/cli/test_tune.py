"""``recsys tune`` in process: a study on the store's data, its best trial recorded, a report."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from recsys import tuned
from recsys.cli import app
from recsys.db.engine import create_engine

runner = CliRunner()


def test_recsys_tune_records_the_best_trial_and_writes_its_report(
    recsys_env: dict[str, str], one_thread: None
) -> None:
    generated = runner.invoke(
        app, ["generate", "synthetic", "--users", "80", "--items", "40", "--interactions", "1500"]
    )
    assert generated.exit_code == 0, generated.output
    args = ["tune", "--model", "gru4rec", "--trials", "2", "--max-epochs", "2", "--json"]
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    result = json.loads(done.output.strip().splitlines()[-1])
    assert result["family"] == "gru4rec" and result["trials"] == 2 and result["ran"] == 2
    found = tuned.latest(create_engine(recsys_env["RECSYS_DATABASE_URL"]), "gru4rec")
    assert found is not None and found.id == result["id"] and found.params == result["params"]
    report = Path(result["report"])
    assert report.parent == Path(recsys_env["RECSYS_HOME"]) / "reports"
    assert "no test metric was computed" in report.read_text()
    assert Path(result["plot"]).read_bytes().startswith(b"\x89PNG")

    again = runner.invoke(app, ["tune", "--model", "gru4rec", "--trials", "2"])  # resumed: done
    assert again.exit_code == 0, again.output
    assert "of 2 (" in again.output and "0 in this run" in again.output


def test_recsys_tune_refuses_what_it_cannot_tune(recsys_env: dict[str, str]) -> None:
    for args, message in (
        (["--model", "pop"], "error: pop has nothing to tune"),
        (["--model", "nope"], "error: unknown model 'nope'"),
        (["--model", "ease", "--split", "random"], "error: unknown split 'random'"),
    ):
        done = runner.invoke(app, ["tune", *args])
        assert done.exit_code == 1 and message in done.output, done.output
