"""Run an import end to end: write the rejects report, honour ``strict``, load the batch."""

from __future__ import annotations

import csv
import logging
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine

from recsys.data.frames import ImportBatch, Reject
from recsys.data.load import LoadResult, load_batch
from recsys.db.migrate import require_current
from recsys.errors import RejectedRowsError

logger = logging.getLogger(__name__)


def write_rejects(batch: ImportBatch, folder: Path) -> Path | None:
    """Write every rejected row (file, line, reason, raw text) to a CSV; None when none.

    The raw text is written as it was read, NUL and line breaks included (csv quotes them);
    only a lone surrogate, which UTF-8 cannot carry, is written as its ``\\udXXX`` escape.
    """
    rejects = batch.all_rejects
    if not rejects:
        return None
    path = rejects_path(folder, batch.kind)
    append_rejects(path, rejects)
    return path


def rejects_path(folder: Path, name: str) -> Path:
    """A new rejects file in ``folder`` named after ``name`` and the time."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return folder / f"{name}-{stamp}-{uuid.uuid4().hex[:6]}.csv"


def append_rejects(path: Path, rejects: list[Reject]) -> None:
    """Add rows to a rejects file (file, line, reason, raw), with the header when it is new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="", encoding="utf-8", errors="backslashreplace") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(["file", "line", "reason", "raw"])
        writer.writerows((r.file, r.line, r.reason, r.raw) for r in rejects)


def ingest(
    engine: Engine, batch: ImportBatch, rejects_dir: Path, *, strict: bool = False
) -> LoadResult:
    """Load ``batch``; rejected rows go to a report file, and under ``strict`` stop the load."""
    require_current(engine)
    rejects_path = write_rejects(batch, rejects_dir)
    if rejects_path is not None:
        rejects = batch.all_rejects
        counts = ", ".join(
            f"{k}={v}" for k, v in sorted(Counter(r.reason for r in rejects).items())
        )
        logger.info("%d rows rejected (%s): %s", len(rejects), counts, rejects_path)
        if strict:
            raise RejectedRowsError(
                f"--strict: {len(rejects)} rows rejected ({counts}); nothing was written; "
                f"see {rejects_path}"
            )
    return load_batch(engine, batch, str(rejects_path) if rejects_path else None)
