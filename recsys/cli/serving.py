"""``recsys serve``, ``bento`` and ``recsys keys``: the prediction API, its packaging and
its credentials."""

from __future__ import annotations

from typing import Annotated

import typer

from recsys.cli import runner
from recsys.cli.output import JsonOption, current_engine, emit, user_errors
from recsys.cli.runner import SERVICE, exec_serve

keys_app = typer.Typer(help="API keys of the prediction API.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("bento")(build_bento)
    app.add_typer(keys_app, name="keys")


@user_errors
def serve(
    port: Annotated[int, typer.Option(help="HTTP port.")] = 3000,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    bento: Annotated[
        str | None, typer.Option(help="Serve a built bento (e.g. recsys:latest) instead.")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Service worker processes (BentoML workers; default 1). Each loads the model, "
            "batches its own requests and follows the champion; /metrics adds them up.",
        ),
    ] = None,
) -> None:
    """Start the prediction API (BentoML) on the registry's current champion."""
    from recsys import registry

    champion = registry.alias_version(current_engine(), registry.CHAMPION)
    if champion is None and bento is None:
        typer.echo(
            "no champion yet: the service answers /readyz with 503 until one is promoted",
            err=True,
        )
    target = bento or SERVICE
    processes = f", {workers} workers" if workers else ""
    typer.echo(
        f"serving {target} (champion v{champion}{processes}) on http://{host}:{port}", err=True
    )
    exec_serve(target, host, port, workers)


@user_errors
def build_bento(
    version: Annotated[str, typer.Option(help="Version number or alias to package.")] = "champion",
    as_json: JsonOption = False,
) -> None:
    """Package a version as a bento: its artifact into BentoML's model store, then build."""
    emit(runner.build_bento(version), as_json)


@keys_app.command("create")
@user_errors
def keys_create(
    name: Annotated[str, typer.Argument(help="A name for the key (who or what uses it).")],
    scope: Annotated[
        list[str],
        typer.Option("--scope", "-s", help="read, events or admin (repeat, or a,b)."),
    ],
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print the key alone (for scripts).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Make an API key; it is printed once and only its hash is stored."""
    from recsys import keys

    engine = current_engine(migrated=True)
    secret, record = keys.create_key(engine, name, scope)
    data = {"name": record.name, "prefix": record.prefix, "scopes": list(record.scopes)}
    if as_json:
        emit({**data, "key": secret}, True)
        return
    if quiet:
        typer.echo(secret)
        return
    typer.echo(f"key {record.name!r} ({','.join(record.scopes)}); shown once, store it now:")
    typer.echo(secret)


@keys_app.command("list")
@user_errors
def keys_list(as_json: JsonOption = False) -> None:
    """Every key with its scopes and whether it is revoked (never the key itself)."""
    from recsys import keys

    engine = current_engine(migrated=True)
    records = keys.list_keys(engine)
    rows = [
        {
            "name": k.name,
            "prefix": k.prefix,
            "scopes": list(k.scopes),
            "created_at": k.created_at.isoformat(),
            "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
        }
        for k in records
    ]

    def table() -> None:
        if not records:
            typer.echo("no keys yet: `recsys keys create NAME --scope read`")
            return
        typer.echo(f"{'name':<24} {'prefix':<10} {'scopes':<18} {'created (UTC)':<19}  revoked")
        for k in records:
            revoked = k.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if k.revoked_at else "-"
            typer.echo(
                f"{k.name:<24} {k.prefix:<10} {','.join(k.scopes):<18} "
                f"{k.created_at.strftime('%Y-%m-%d %H:%M:%S'):<19}  {revoked}"
            )

    emit({"keys": rows}, as_json, table)


@keys_app.command("revoke")
@user_errors
def keys_revoke(
    name: Annotated[str, typer.Argument(help="The key's name or prefix.")],
    as_json: JsonOption = False,
) -> None:
    """Revoke a key: the service refuses it within seconds (it re-reads keys every 5 s)."""
    from recsys import keys

    engine = current_engine(migrated=True)
    record = keys.revoke_key(engine, name)
    emit({"name": record.name, "prefix": record.prefix, "revoked": True}, as_json)
