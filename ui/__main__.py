"""``python -m ui --host H --port P``: the dashboard in this process (what ``recsys ui`` runs).

It reads the same settings as every entry point (``RECSYS_*``: the database, the home, the
service URL and key) and ``PREFECT_API_URL`` for the flows page, refuses a database whose
schema is not the code's, and serves with uvicorn until stopped.
"""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from recsys.config import get_settings
from recsys.db.engine import create_engine
from recsys.db.migrate import require_current
from recsys.errors import RecsysError
from ui.app import create_app
from ui.prefect_api import PrefectApi


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ui", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind")
    parser.add_argument("--port", type=int, default=8080, help="HTTP port")
    parser.add_argument("--log-level", default="warning", help="uvicorn's log level")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = get_settings()
        engine = create_engine(settings.database_url)
        require_current(engine)
    except RecsysError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    app = create_app(settings, engine, prefect=PrefectApi.from_environment(), host=args.host)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
