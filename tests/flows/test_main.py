"""``python -m flows NAME JSON``: the CLI's one way into the flows."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from flows.__main__ import ENTRY_POINTS, entry_point


def test_flows_main_every_entry_point_takes_keyword_parameters() -> None:
    for name in ENTRY_POINTS:
        run = entry_point(name)
        kinds = {p.kind for p in inspect.signature(run).parameters.values()}
        assert kinds <= {
            inspect.Parameter.KEYWORD_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.VAR_KEYWORD,
        }, name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "unknown flow 'nope'"),
        (["batch", "[1, 2]"], "one JSON object"),
        ([], "usage: python -m flows"),
    ],
)
def test_flows_main_refuses_bad_invocations(args: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flows", *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0 and message in done.stderr


def test_flows_main_reports_a_bad_parameter_as_one_json_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flows", "batch", '{"colour": "blue"}'],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "colour" in done.stdout.strip().splitlines()[-1]
