"""``recsys recommend``: what a version recommends to a user, from their live history."""

from __future__ import annotations

from typing import Annotated

import typer

from recsys.cli.output import JsonOption, current_engine, emit, user_errors, version_ref


@user_errors
def recommend(
    user_id: Annotated[str, typer.Argument(help="External user id.")],
    k: Annotated[int, typer.Option("-k", "--k", help="How many items.", min=1, max=1000)] = 10,
    version: Annotated[
        str, typer.Option(help="Version number or alias to score with.")
    ] = "champion",
    include_seen: Annotated[
        bool, typer.Option("--include-seen", help="Do not exclude items the user has seen.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Top-k for a user from the champion's ONNX graph (onnxruntime) and their live history."""
    from recsys import registry
    from recsys.catalogue import Catalogue
    from recsys.db.queries import user_history
    from recsys.retrieval import recommend as rank

    engine = current_engine()
    artifact = registry.load_artifact(engine, version_ref(version))
    history = user_history(engine, user_id)
    ranked = rank(
        artifact,
        history or [],
        user_id=user_id,
        k=k,
        exclude_seen=not include_seen,
        known_user=history is not None,
        catalogue=Catalogue.load(engine, artifact.item_ids),  # titles; unavailable items out
    )
    items = [
        {"rank": n, "item_id": it.item_id, "title": it.title, "score": round(it.score, 6)}
        for n, it in enumerate(ranked.items, 1)
    ]
    unknown = sum(item not in artifact.item_index for item in history or [])
    data = {
        "user_id": user_id,
        "known_user": history is not None,
        "history_length": len(history or []),
        "model": artifact.family,
        "version": artifact.version,
        "fallback": ranked.fallback,
        "unknown_history_items": unknown,
        "items": items,
    }
    if as_json:
        emit(data, True)
        return
    note = f", fallback: {ranked.fallback}" if ranked.fallback else ""
    typer.echo(
        f"user {user_id}: {data['history_length']} events; {artifact.family} "
        f"v{artifact.version}{note}"
    )
    typer.echo(f"{'rank':>4}  {'item':<12} {'score':>10}  title")
    for row in items:
        typer.echo(
            f"{row['rank']:>4}  {row['item_id']:<12} {row['score']:>10.4f}  {row['title'] or ''}"
        )
