"""``python -m flows NAME '{"parameter": value, ...}'``: run one flow entry point.

How the ``recsys`` CLI reaches the flows (the library never imports Prefect): the CLI
declares the options, this takes them as the JSON object of the entry point's keyword
arguments and prints its result as one JSON line (``{"error": ...}`` and exit 1 on failure).
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from typing import Any

from flows.common import print_result

ENTRY_POINTS = {
    "retrain": ("flows.retrain", "run_once"),
    "batch": ("flows.batch", "run_once"),
    "sync": ("flows.sync", "run_once"),
    "monitor": ("flows.monitor", "run_once"),
    "tune": ("flows.tune", "run_once"),
    "schedule": ("flows.deploy", "schedule"),
    "deploy": ("flows.workpools", "deploy"),
}


def entry_point(name: str) -> Callable[..., dict[str, Any]]:
    if name not in ENTRY_POINTS:
        raise SystemExit(f"unknown flow {name!r}; choose from: {', '.join(ENTRY_POINTS)}")
    module, function = ENTRY_POINTS[name]
    run: Callable[..., dict[str, Any]] = getattr(importlib.import_module(module), function)
    return run


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        raise SystemExit(f"usage: python -m flows {{{','.join(ENTRY_POINTS)}}} [JSON]")
    run = entry_point(args[0])
    parameters = json.loads(args[1]) if len(args) > 1 else {}
    if not isinstance(parameters, dict):
        raise SystemExit("the parameters must be one JSON object")
    print_result(lambda: run(**parameters))


if __name__ == "__main__":
    main()
