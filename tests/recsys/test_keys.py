"""API keys on both databases: scopes, hashed storage, revocation, and the CLI around them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import Engine, select

from recsys.config import Settings
from recsys.db.engine import create_engine
from recsys.db.migrate import upgrade
from recsys.db.schema import api_keys_table
from recsys.keys import (
    ApiKeyError,
    KeyRing,
    create_key,
    list_keys,
    parse_scopes,
    revoke_key,
)
from serving.api import ApiError, Guard


def test_keys_are_stored_as_hashes_and_grant_their_scopes(engine: Engine) -> None:
    key, record = create_key(engine, "shop frontend", ["read", "events"])
    assert key.startswith(f"rsk_{record.prefix}_") and record.scopes == ("read", "events")
    with engine.connect() as conn:
        stored = [tuple(row) for row in conn.execute(select(api_keys_table))]
    assert not any(key in str(value) for row in stored for value in row)  # never in clear

    ring = KeyRing(engine)
    assert ring.scopes(key) == ("read", "events")
    assert ring.scopes(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert ring.scopes("rsk_nope_x") is None and ring.scopes("Bearer") is None
    admin, _ = create_key(engine, "ops", ["admin"])
    assert ring.scopes(admin) == ("admin",)  # a new key is found without waiting


def test_keys_revoked_are_refused_and_still_listed(engine: Engine) -> None:
    key, _ = create_key(engine, "temporary", ["read"])
    ring = KeyRing(engine, refresh_seconds=0.0)
    assert ring.scopes(key) == ("read",)
    revoked = revoke_key(engine, "temporary")
    assert revoked.revoked_at is not None and not revoked.allows("read")
    deadline = time.monotonic() + 5
    while ring.scopes(key) is not None:  # the cache is re-read in the background
        assert time.monotonic() < deadline, "a revoked key was still accepted after 5 s"
        time.sleep(0.05)
    assert [k.name for k in list_keys(engine)] == ["temporary"]
    with pytest.raises(ApiKeyError, match="no active key"):
        revoke_key(engine, "temporary")


def test_keys_refuse_bad_scopes_and_duplicate_names(engine: Engine) -> None:
    assert parse_scopes(["admin,read", " events "]) == ("read", "events", "admin")
    with pytest.raises(ApiKeyError, match="unknown scope 'write'"):
        parse_scopes(["read,write"])
    with pytest.raises(ApiKeyError, match="at least one scope"):
        parse_scopes([""])
    create_key(engine, "twice", ["read"])
    with pytest.raises(ApiKeyError, match="already exists"):
        create_key(engine, "twice", ["read"])


@pytest.mark.parametrize("read_auth", ["required", "open"])
def test_keys_guard_open_reads_still_need_keys_to_write(engine: Engine, read_auth: str) -> None:
    guard = Guard(KeyRing(engine), Settings(read_auth=read_auth))
    if read_auth == "open":
        guard.check(None, "read")
    else:
        with pytest.raises(ApiError) as refused:
            guard.check(None, "read")
        assert refused.value.status == 401
    with pytest.raises(ApiError) as refused:
        guard.check(None, "events")
    assert refused.value.status == 401
    reader, _ = create_key(engine, "reader", ["read"])
    with pytest.raises(ApiError) as refused:
        guard.check(HTTPAuthorizationCredentials(scheme="bearer", credentials=reader), "events")
    assert refused.value.status == 403


@pytest.mark.slow
def test_keys_cli_create_list_revoke(tmp_path: Path) -> None:
    """The commands over the functions tested above on both databases; SQLite is enough."""
    url = f"sqlite:///{tmp_path / 'recsys.db'}"
    upgrade(create_engine(url))
    recsys_env = {**os.environ, "RECSYS_HOME": str(tmp_path / "home"), "RECSYS_DATABASE_URL": url}
    recsys = str(Path(sys.executable).with_name("recsys"))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [recsys, "keys", *args], capture_output=True, text=True, env={**recsys_env}
        )

    made = run("create", "app", "--scope", "read,events", "--json")
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout.strip().splitlines()[-1])
    assert created["key"].startswith("rsk_") and created["scopes"] == ["read", "events"]
    quiet = run("create", "worker", "-s", "events", "--quiet")
    assert quiet.stdout.strip().startswith("rsk_") and len(quiet.stdout.split()) == 1
    listed = json.loads(run("list", "--json").stdout.strip().splitlines()[-1])
    assert [k["name"] for k in listed["keys"]] == ["app", "worker"]
    assert created["key"] not in run("list").stdout
    assert run("revoke", "app").returncode == 0
    again = run("revoke", "app")
    assert again.returncode == 1 and again.stderr.startswith("error: no active key")
    bad = run("create", "x", "--scope", "write")
    assert bad.returncode == 1 and "unknown scope" in bad.stderr
