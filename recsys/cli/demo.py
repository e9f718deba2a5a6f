"""``recsys demo``: the whole path on the embedded default, from data to a live service."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy import Engine

from recsys.cli.flows import DEFAULT_MODELS_TEXT, model_list
from recsys.cli.output import engine_of, safe_url, user_errors
from recsys.cli.runner import SERVICE, run_flow, serve_command
from recsys.config import Settings, get_settings
from recsys.errors import RecsysError


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


@user_errors
def demo(
    data: Annotated[
        Path | None, typer.Option(help="A MovieLens folder to import instead of synthetic data.")
    ] = None,
    users: Annotated[int, typer.Option(help="Synthetic users.")] = 2000,
    items: Annotated[int, typer.Option(help="Synthetic items.")] = 1000,
    interactions: Annotated[int, typer.Option(help="Synthetic interactions.")] = 60000,
    models: Annotated[str, typer.Option(help="Model families to train.")] = DEFAULT_MODELS_TEXT,
    budget_seconds: Annotated[float, typer.Option(help="Training budget per model.")] = 60.0,
) -> None:
    """The whole path on the embedded default: data, retrain flow, champion, live service."""
    from recsys.db.migrate import upgrade

    settings = get_settings()
    started = time.perf_counter()
    typer.echo(f"recsys demo: home {settings.home}, database {safe_url(settings.database_url)}")
    revision = upgrade(engine_of(settings))
    typer.echo(f"1. migrated the database to schema revision {revision}")
    engine = engine_of(settings)
    if data is not None:
        from recsys.data.import_kinds import read_import
        from recsys.data.ingest import ingest

        loaded = ingest(engine, read_import("movielens", data), settings.rejects_dir)
        typer.echo(
            f"2. imported {data}: {loaded.rows_inserted:,} new, {loaded.rows_skipped:,} already "
            f"stored, {loaded.rows_rejected:,} rejected"
        )
    else:
        _demo_synthetic(settings, engine, users, items, interactions)

    typer.echo(f"3. running the retrain flow (Prefect) on {models}, {budget_seconds:g}s each ...")
    result = run_flow(
        "retrain",
        {"models": model_list(models), "budget_seconds": budget_seconds},
        on_log=_show_progress,
    )
    typer.echo(f"   {result['status']}: {result['reason']}")
    for row in result.get("candidates", []):
        typer.echo(
            f"   v{row['version']} {row['model']:<8} ndcg@10 {row.get('ndcg@10', 0):.4f} "
            f"{row.get('ndcg@10 ci', '')}  ({row['train_seconds']:.0f}s)"
        )
    typer.echo(f"   report: {result.get('report_path')}")
    _demo_service(settings, engine)
    typer.echo(f"done in {time.perf_counter() - started:.1f}s; nothing left running")
    home = "" if settings.home == Path(".recsys").resolve() else f"RECSYS_HOME={settings.home} "
    typer.echo(
        "\nThe dashboard on this data (data, models, the champion's history, an explorer):\n"
        f"   {home}recsys ui --port 8080   (or: make ui)   then open http://127.0.0.1:8080\n"
        "   (with `recsys serve` running and RECSYS_SERVICE_URL=http://127.0.0.1:3000 and a read "
        "key in RECSYS_API_KEY, its explorer asks the service)"
    )


# A retrain's progress lines (flows.retrain forwards the training loop's epochs to the run's
# log as "progress NAME: epoch ..."), without Prefect's prefix and colours.
_PROGRESS = re.compile(r" - progress (.+)$")
_COLOURS = re.compile(r"\x1b\[[0-9;]*m")


def _show_progress(line: str) -> None:
    found = _PROGRESS.search(_COLOURS.sub("", line))
    if found:
        typer.echo(f"   {found.group(1)}")


def _demo_synthetic(
    settings: Settings, engine: Engine, users: int, items: int, interactions: int
) -> None:
    from recsys.data.frames import write_csv
    from recsys.data.import_kinds import EventFileOptions, read_import
    from recsys.data.ingest import ingest
    from recsys.data.synthetic import SyntheticConfig, generate

    folder = settings.home / "demo"
    paths = write_csv(generate(SyntheticConfig(users, items, interactions, seed=42)), folder)
    typer.echo(
        f"2. generated {interactions:,} synthetic interactions of {users:,} users on "
        f"{items:,} items (seed 42) as CSV files in {folder}"
    )
    options = EventFileOptions(
        user_col="user_id",
        item_col="item_id",
        time_col="occurred_at",
        rating_col="value",
        event_type_col="event_type",
        time_unit="ms",
        items=str(paths["items"]),
        users=str(paths["users"]),
    )
    for attempt in ("imported", "imported again"):
        parsed = read_import("csv", paths["interactions"], options)
        result = ingest(engine, parsed, settings.rejects_dir)
        typer.echo(
            f"   {attempt} with the CSV importer: {result.rows_inserted:,} new, "
            f"{result.rows_skipped:,} already stored, {result.rows_rejected:,} rejected"
        )


def _demo_service(settings: Settings, engine: Engine) -> None:
    """Start the service, ask it for recommendations, print them, stop it."""
    import os
    import socket
    import subprocess
    import uuid

    import httpx

    from recsys import keys
    from recsys.db.queries import active_users, user_history

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    env = {
        **os.environ,
        "RECSYS_HOME": str(settings.home),
        "RECSYS_DATABASE_URL": settings.database_url,
    }
    log = settings.home / "demo-service.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            serve_command(SERVICE, "127.0.0.1", port),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    key_name = f"demo-{uuid.uuid4().hex[:8]}"
    secret, _ = keys.create_key(engine, key_name, [keys.READ])
    http = httpx.Client(headers={"Authorization": f"Bearer {secret}"}, timeout=30)
    try:
        deadline = time.monotonic() + 120
        while not _ready(base):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RecsysError(f"the service did not start; see {log}")
            time.sleep(0.3)
        typer.echo(f"4. started the service (BentoML) at {base} (with a read key for the demo)")
        known = active_users(engine, min_events=5, limit=3)
        for n, user_id in enumerate(known):
            reply = http.post(
                f"{base}/recommend", json={"user_id": user_id, "k": 5, "explain": n == 0}
            ).json()
            _print_recommendations(f"user {user_id}", reply, explain=n == 0)
        session = (user_history(engine, known[0]) or [])[-3:]
        reply = http.post(f"{base}/recommend_session", json={"item_ids": session, "k": 5}).json()
        _print_recommendations(f"anonymous session {session}", reply, explain=False)
        reply = http.post(f"{base}/recommend", json={"user_id": "someone-new", "k": 5}).json()
        _print_recommendations("unknown user someone-new", reply, explain=False)
    finally:
        http.close()
        keys.revoke_key(engine, key_name)
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    typer.echo("5. stopped the service")


def _ready(base: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _print_recommendations(who: str, reply: dict[str, Any], explain: bool) -> None:
    if "items" not in reply:
        raise RecsysError(f"the service answered {reply}")
    fallback = f", fallback: {reply['fallback']}" if reply.get("fallback") else ""
    typer.echo(f"\n   {who}: {reply['model_family']} v{reply['model_version']}{fallback}")
    typer.echo(f"   {'rank':>4}  {'item':<10} {'score':>9}  title")
    for rank, item in enumerate(reply["items"], start=1):
        typer.echo(
            f"   {rank:>4}  {item['item_id']:<10} {item['score']:>9.4f}  {item['title'] or ''}"
        )
    if explain and reply["items"] and reply["items"][0].get("because"):
        reasons = ", ".join(
            f"{b['title'] or b['item_id']} ({b['weight']:.2f})"
            for b in reply["items"][0]["because"]
        )
        typer.echo(f"   why #1 ({reply['items'][0]['title']}): close to {reasons}")
