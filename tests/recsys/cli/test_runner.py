"""Child processes of the CLI: a flow's log lines followed as they come, and what the demo
shows of a retrain's progress."""

from __future__ import annotations

import pytest

from recsys.cli.demo import _show_progress
from recsys.cli.runner import run_flow, ui_command
from recsys.errors import RecsysError


def test_a_flows_lines_reach_the_caller_as_they_come_and_its_error_still_fails() -> None:
    seen: list[str] = []
    with pytest.raises(RecsysError, match="nope failed: unknown flow 'nope'"):
        run_flow("nope", {}, on_log=seen.append)
    assert any("unknown flow 'nope'" in line for line in seen)


def test_the_demo_shows_the_progress_lines_without_prefects_prefix(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _show_progress(
        "\x1b[36m22:51:05.525\x1b[0m | INFO    | Task run 'train_and_evaluate-760' - progress "
        "sasrec: epoch 3/50, valid ndcg@10 0.1584 (best 0.1584 at epoch 3), 3 s, 5 s left of 8 s"
    )
    _show_progress("22:51:05.525 | INFO    | recsys.training - SASRec epoch 3/50 loss 4.75")
    assert capsys.readouterr().out == (
        "   sasrec: epoch 3/50, valid ndcg@10 0.1584 (best 0.1584 at epoch 3), 3 s, "
        "5 s left of 8 s\n"
    )


def test_the_dashboard_runs_as_python_m_ui() -> None:
    command = ui_command("127.0.0.1", 8080)
    assert command[1:] == ["-m", "ui", "--host", "127.0.0.1", "--port", "8080"]
