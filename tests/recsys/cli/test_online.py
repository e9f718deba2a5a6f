"""``recsys online drift``: the champion's drift signals as a table or one JSON line."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from recsys import registry
from recsys.cli import app
from recsys.db.engine import create_engine
from recsys.online.impressions import now_ms

from ..online.conftest import Champion, promote_champion, traffic

runner = CliRunner()


def test_online_drift_prints_the_signals(recsys_env: dict[str, str], tmp_path: Path) -> None:
    result = runner.invoke(app, ["online", "drift"])
    assert result.exit_code == 1 and "no champion" in result.output

    engine = create_engine(recsys_env["RECSYS_DATABASE_URL"])
    version = promote_champion(engine, tmp_path)
    champion = Champion(engine, version, registry.load_artifact(engine, version))
    now = now_ms()
    strangers = [f"newcomer-{n}" for n in range(250)]
    traffic(champion, start_ms=now - 1_800_000, end_ms=now - 1_000, lists=250, ctr=0.2,
            users=strangers, seed=3, tag="c")  # fmt: skip
    result = runner.invoke(app, ["online", "drift", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output.strip().splitlines()[-1])
    assert data["champion"] == version and "unknown_users_requests" in data["tripped"]
    by_name = {s["name"]: s for s in data["signals"]}
    assert by_name["unknown_users_requests"]["value"] == 1.0
    assert by_name["popularity_psi"]["tripped"] is False  # 50 clicks: fewer than the minimum

    table = runner.invoke(app, ["online", "drift"])
    assert table.exit_code == 0, table.output
    assert f"champion v{version}" in table.output
    assert "unknown_users_requests" in table.output and "TRIPPED" in table.output
    engine.dispose()
