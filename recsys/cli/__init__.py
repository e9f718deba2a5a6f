"""The ``recsys`` command line: parses, calls library functions, prints tables or JSON.

Every command prints a human table by default and one JSON object as its last line with
``--json``. User errors exit non-zero with a one-line reason and no traceback. One module
per command group: :mod:`.data` (schema, imports, generation, stats), :mod:`.models`
(training, evaluation, the registry, recommendations), :mod:`.tune` (hyper-parameter
studies), :mod:`.sources` (application
databases as sources), :mod:`.online` (online metrics), :mod:`.experiments`
(champion against challenger), :mod:`.flows` (retrain, batch, schedule), :mod:`.deploy`
(the deployments on work pools), :mod:`.serving` (the service, bentos, API keys), :mod:`.ui`
(the dashboard) and :mod:`.demo`; what they share is in :mod:`.output`, and every child
process starts in :mod:`.runner`.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from recsys.cli import (
    data,
    demo,
    deploy,
    experiments,
    flows,
    models,
    online,
    serving,
    sources,
    tune,
    ui,
)

app = typer.Typer(
    help="recsys: deep-learning recommendations from SQL to a served ONNX model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


for group in (data, sources, models, tune, online, experiments, flows, deploy, serving, ui, demo):
    group.register(app)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="recsys")


__all__ = ["app", "main"]
