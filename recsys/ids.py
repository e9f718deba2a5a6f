"""What an external id (or an event type) may hold, checked the same way by imports and the API.

PostgreSQL cannot store NUL in text and no UTF-8 encoder takes a lone surrogate, so such a
value would fail a whole transaction; control characters in an id are never intended. Both
are refused at the edge, on every database alike.
"""

from __future__ import annotations

import re

MAX_ID_LENGTH = 255
# The width of ``interactions.event_type``; a longer type would fail the whole load.
MAX_EVENT_TYPE_LENGTH = 32

# C0 controls, DEL, C1 controls (U+0085 included) and UTF-16 surrogates, written as escapes
# so the control part also reads as RE2, pyarrow's engine, which refuses surrogates.
_CONTROLS = r"\x00-\x1f\x7f-\x9f"
_SURROGATES = r"\ud800-\udfff"
FORBIDDEN = re.compile(f"[{_CONTROLS}{_SURROGATES}]")
# The same rule for an Arrow string column, which cannot hold a surrogate in the first place.
FORBIDDEN_ARROW = f"[{_CONTROLS}]"
# What no text column can store, whatever it holds: NUL and lone surrogates.
UNSTORABLE = re.compile(rf"[\x00{_SURROGATES}]")


def forbidden_character(text: str) -> str | None:
    """The first character ``text`` may not hold, as ``U+XXXX``; None when it is clean."""
    match = FORBIDDEN.search(text)
    return None if match is None else f"U+{ord(match.group()):04X}"


def unstorable_character(text: str) -> str | None:
    """The first character no database text column can store (NUL, a surrogate), or None."""
    match = UNSTORABLE.search(text)
    return None if match is None else f"U+{ord(match.group()):04X}"


def id_problem(text: str) -> str | None:
    """Why ``text`` is not a valid external id, or None when it is."""
    if not text:
        return "must not be empty"
    if len(text) > MAX_ID_LENGTH:
        return f"at most {MAX_ID_LENGTH} characters, got {len(text)}"
    bad = forbidden_character(text)
    if bad is not None:
        return f"must not contain control characters (found {bad})"
    return None


def event_type_problem(text: str) -> str | None:
    """Why ``text`` is not a valid event type (an id that fits its column), or None."""
    if len(text) > MAX_EVENT_TYPE_LENGTH:
        return f"at most {MAX_EVENT_TYPE_LENGTH} characters, got {len(text)}"
    return id_problem(text)
