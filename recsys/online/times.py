"""Moments given on a command line: ``7d``, ``24h``, ``30m`` (that long ago) or ISO 8601."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from recsys.errors import RecsysError

_AGO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def moment_ms(text: str, now_ms: int | None = None) -> int:
    """Epoch ms of ``text``: an age (``7d``: seven days before now) or an ISO time (UTC when
    it has no offset)."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    ago = _AGO.match(text)
    if ago:
        return now - int(float(ago.group(1)) * _UNIT_MS[ago.group(2)])
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise RecsysError(
            f"{text!r} is not a time: give an age (30m, 24h, 7d, 2w) or ISO 8601 "
            "(2026-12-01 or 2026-12-01T08:00:00+01:00)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)
