"""Shared pieces of the benchmark scripts: a scratch database per backend, result files, tables.

A PostgreSQL run gets its own ``recsys_bench_<random>`` database, dropped afterwards; a SQLite
run gets a file in a temporary folder, removed afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import secrets
import shlex
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
BENCH_PREFIX = "recsys_bench_"
BACKENDS = ("sqlite", "postgresql")


class Skipped(Exception):
    """A backend cannot be measured here; the message says why."""


def parse_backends(text: str) -> list[str]:
    backends = [b.strip() for b in text.split(",") if b.strip()]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        raise SystemExit(f"unknown backend(s) {', '.join(unknown)}; choose from {BACKENDS}")
    return backends


def admin_url() -> str:
    return os.environ.get("RECSYS_BENCH_POSTGRES_URL", DEFAULT_ADMIN_URL)


@contextmanager
def scratch_database(backend: str) -> Iterator[str]:
    """Yield the URL of an empty database for ``backend``; raise :class:`Skipped` if none."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix=BENCH_PREFIX) as folder:
            yield f"sqlite:///{Path(folder) / 'bench.db'}"
        return
    admin = make_url(admin_url()).set(drivername="postgresql")
    conninfo = admin.render_as_string(hide_password=False)
    name = BENCH_PREFIX + secrets.token_hex(4)
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Skipped(f"PostgreSQL unreachable at {admin.render_as_string()}: {reason}") from exc
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        _drop_database(conninfo, name)


def _drop_database(conninfo: str, name: str) -> None:
    if not name.startswith(BENCH_PREFIX):
        raise ValueError(f"refusing to drop {name!r}: not a benchmark database")
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def command_line() -> str:
    """The command that ran this script, with the interpreter relative to the working dir."""
    python = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else "python"
    return shlex.join([python, *sys.argv])


def machine_info(sources: Sequence[str] = ()) -> dict[str, Any]:
    """Where and how the numbers were taken; ``sources`` (repo-relative files) get a digest."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
        "command": command_line(),
        "sources_sha256": source_digests(sources),
    }


def source_digests(paths: Sequence[str]) -> str:
    """Short content hashes of the measured code (a folder: its ``*.py`` files together)."""
    out = []
    for path in paths:
        target = REPO_ROOT / path
        files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
        digest = hashlib.sha256()
        for file in files:
            digest.update(file.read_bytes() if file.exists() else b"missing")
        out.append(f"{path}:{digest.hexdigest()[:12]}")
    return ", ".join(out)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=False)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    align = ["---"] + ["---:"] * (len(headers) - 1)
    return "\n".join([line(headers), line(align), *map(line, rows)])


def write_results(
    name: str,
    title: str,
    info: dict[str, Any],
    payload: dict[str, Any],
    tables: Sequence[tuple[str, Sequence[str], Sequence[Sequence[str]]]],
    notes: Sequence[str] = (),
) -> tuple[Path, Path]:
    """Write ``results/<name>.json`` (info + payload) and ``results/<name>.md`` (the tables)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    json_path, md_path = RESULTS_DIR / f"{name}.json", RESULTS_DIR / f"{name}.md"
    json_path.write_text(json.dumps({**info, **payload}, indent=2) + "\n")
    lines = [f"# {title}", ""]
    lines += [f"- {key}: `{value}`" for key, value in info.items()]
    for heading, headers, rows in tables:
        lines += ["", f"## {heading}", "", markdown_table(headers, rows)]
    if notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {note}" for note in notes]
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"
