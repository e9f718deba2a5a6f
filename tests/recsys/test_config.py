"""Settings: one typed place reads every RECSYS_* variable; the README's table is generated."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from recsys.config import Settings, SettingsError, get_settings, settings_table, variables

ROOT = Path(__file__).resolve().parents[2]


def test_config_readme_table_is_the_generated_one() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert settings_table() in readme, (
        "the README's settings table differs from recsys/config.py; "
        "regenerate it with `python -m recsys.config`"
    )


def test_config_no_other_module_reads_recsys_variables() -> None:
    """Code outside recsys/config.py takes settings from Settings, never from os.environ."""
    reads = re.compile(r"(?:environ(?:\.get)?\s*[\[(]|getenv\s*\()\s*[\"']RECSYS_")
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("recsys", "serving", "flows", "ui", "migrations")
        for path in (ROOT / folder).rglob("*.py")
        if path.name != "config.py" and reads.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_config_every_variable_is_documented() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    architecture = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    for name in variables():
        assert f"`{name}`" in readme
        assert name in architecture, f"docs/architecture.md does not mention {name}"


def test_config_defaults_and_embedded_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in variables():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    settings = get_settings()
    assert settings.home == tmp_path.resolve()
    assert settings.database_url == f"sqlite:///{tmp_path.resolve() / 'recsys.db'}"
    assert settings.read_auth == "required" and settings.poll_seconds == 10.0
    assert settings.admin_secret is None and settings.threads is None


def test_config_values_parse_choices_fold_and_empty_means_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RECSYS_READ_AUTH", " Open ")
    monkeypatch.setenv("RECSYS_POLL_SECONDS", "")
    monkeypatch.setenv("RECSYS_MAX_BODY_BYTES", "2048")
    monkeypatch.setenv("RECSYS_DATABASE_URL", "postgresql://someone@db/recsys")
    settings = get_settings()
    assert settings.read_auth == "open"
    assert settings.poll_seconds == 10.0
    assert settings.max_body_bytes == 2048
    assert settings.database_url == "postgresql://someone@db/recsys"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RECSYS_POLL_SECONDS", "soon"),
        ("RECSYS_POLL_SECONDS", "-1"),
        ("RECSYS_READ_AUTH", "sometimes"),
        ("RECSYS_THREADS", "0"),
        ("RECSYS_MODEL_SOURCE", "disk"),
        ("RECSYS_SERVE_TUNING", "timeout,turbo"),
        ("RECSYS_SERVE_TUNING", ","),
    ],
)
def test_config_bad_value_is_an_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        get_settings()


def test_config_serve_tuning_is_a_set_of_known_names_or_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert get_settings().serve_tunings == {"timeout", "freeze", "threshold"}
    monkeypatch.setenv("RECSYS_SERVE_TUNING", " Freeze, timeout ,freeze")
    assert get_settings().serve_tuning == "timeout,freeze"
    monkeypatch.setenv("RECSYS_SERVE_TUNING", "NONE")
    assert get_settings().serve_tunings == frozenset()


def test_config_admin_token_never_shows_in_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_ADMIN_TOKEN", "very-secret-token")
    monkeypatch.setenv("RECSYS_API_KEY", "rsk_abc_secret-key")
    settings = get_settings()
    assert settings.admin_secret == "very-secret-token"
    assert settings.api_secret == "rsk_abc_secret-key"
    for secret in ("very-secret-token", "rsk_abc_secret-key"):
        assert secret not in repr(settings) and secret not in str(settings)
        assert secret not in settings.model_dump_json()


def test_config_overrides_win_and_settings_are_frozen() -> None:
    settings = get_settings(scorer_threads=3)
    assert settings.scorer_threads == 3
    with pytest.raises(ValueError):
        settings.scorer_threads = 4  # type: ignore[misc]
    assert isinstance(settings, Settings)
