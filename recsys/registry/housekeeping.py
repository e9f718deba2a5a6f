"""Housekeeping: clearing what crashed registrations left behind."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select, update

from recsys.db.schema import model_versions_table
from recsys.registry.registration import artifact_folder
from recsys.registry.store import MODELS_FOLDER, now


def sweep(engine: Engine, artifacts_dir: Path, *, older_than: timedelta) -> dict[str, Any]:
    """Clear what crashed registrations left: pending rows -> abandoned, folders removed.

    Only rows and ``.partial`` folders older than ``older_than`` are touched, so a
    registration still running in another process is left alone; the result says what was
    left (``left_pending_versions``, ``left_partial_folders``) besides what was cleared.
    """
    cutoff = now() - older_than
    models = artifacts_dir / MODELS_FOLDER
    abandoned = 0
    pending = model_versions_table.c.status == "pending"
    with engine.begin() as conn:
        rows = conn.execute(
            select(model_versions_table.c.version, model_versions_table.c.family)
            .where(pending)
            .where(model_versions_table.c.created_at < cutoff)
        ).all()
        left = list(
            conn.execute(
                select(model_versions_table.c.version)
                .where(pending)
                .where(model_versions_table.c.created_at >= cutoff)
                .order_by(model_versions_table.c.version)
            ).scalars()
        )
        for version, family in rows:
            shutil.rmtree(artifact_folder(artifacts_dir, version, family), ignore_errors=True)
            conn.execute(
                update(model_versions_table)
                .where(model_versions_table.c.version == version)
                .where(pending)
                .values(status="abandoned", error="registration did not finish (process ended)")
            )
            abandoned += 1
    removed = left_folders = 0
    if models.is_dir():
        for folder in models.glob(".v*.partial"):
            modified = datetime.fromtimestamp(folder.stat().st_mtime, tz=UTC)
            if modified < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
            else:
                left_folders += 1
    return {
        "abandoned_versions": abandoned,
        "removed_partial_folders": removed,
        "left_pending_versions": left,
        "left_partial_folders": left_folders,
    }
