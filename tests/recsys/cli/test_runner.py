"""Child processes of the CLI: a flow's log lines followed as they come, what the demo
shows of a retrain's progress, and the service's worker count."""

from __future__ import annotations

import json

import pytest

from recsys.cli.demo import _show_progress
from recsys.cli.runner import (
    CONFIG_OVERRIDES,
    SERVICE_NAME,
    run_flow,
    serve_env,
    ui_command,
)
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


def test_serve_workers_go_through_bentomls_override_merged_with_the_callers() -> None:
    mine = json.dumps({"services": {"recsys": {"traffic": {"timeout": 5}}}, "x": 1})
    env = serve_env(3, {"PATH": "/bin", CONFIG_OVERRIDES: mine})
    assert env["PATH"] == "/bin"
    assert json.loads(env[CONFIG_OVERRIDES]) == {
        "services": {"recsys": {"traffic": {"timeout": 5}, "workers": 3}},
        "x": 1,
    }
    assert CONFIG_OVERRIDES not in serve_env(None, {"PATH": "/bin"})  # the service's own count
    with pytest.raises(RecsysError, match="at least 1"):
        serve_env(0, {})
    with pytest.raises(RecsysError, match="not JSON"):
        serve_env(2, {CONFIG_OVERRIDES: "services.recsys.workers=2"})


def test_the_served_name_is_the_services() -> None:
    """The override is keyed by the service's name: the two must not drift apart."""
    from serving.service import RecsysService

    assert RecsysService.name == SERVICE_NAME  # type: ignore[attr-defined]
