"""Every ``RECSYS_*`` setting, read from the environment in one typed place.

Nothing happens at import time: :func:`get_settings` reads the environment when called and
every other module takes what it needs from the :class:`Settings` it returns. The README's
settings table is generated from the fields here (:func:`settings_table`) and a test keeps
the two the same.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from recsys.errors import RecsysError

ENV_PREFIX = "RECSYS_"
READ_AUTH_CHOICES = ("required", "open")
UNKNOWN_ITEM_CHOICES = ("reject", "create")
MODEL_SOURCE_CHOICES = ("auto", "registry", "bento")
# What each service worker changes in BentoML's and Python's runtime (serving/runtime.py).
SERVE_TUNINGS = ("timeout", "freeze", "threshold")
# What RECSYS_DEVICE (and a training's `device`) may name; whether it exists is checked when
# training starts (recsys.devices), so a GPU setting never stops the service or the CLI.
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
# The model families a retrain trains when none are named (CLI, flow, schedule, demo).
DEFAULT_MODELS = ("sasrec", "gru4rec", "ease")
# Clock skew allowed to an event recorded through the API (a file import allows a day).
DEFAULT_FUTURE_TOLERANCE_SECONDS = 300.0


class SettingsError(RecsysError):
    """A ``RECSYS_*`` variable holds a value that cannot be used; the message names it."""


def _doc(meaning: str, default: str) -> dict[str, Any]:
    """What the settings table says of a field: its meaning and its default in words."""
    return {"meaning": meaning, "default_text": default}


class Settings(BaseSettings):
    """The platform's settings; each field is the variable ``RECSYS_<FIELD>``.

    An unset or empty variable takes the default. Choices are case-insensitive. A value that
    does not parse is a :class:`SettingsError` naming the variable.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
        validate_default=True,
    )

    home: Path = Field(
        default=Path(".recsys"),
        json_schema_extra=_doc("embedded database, artifacts, rejects and reports", "`./.recsys`"),
    )
    database_url: str = Field(
        default="",
        json_schema_extra=_doc("SQLAlchemy URL of the store", "`sqlite:///$RECSYS_HOME/recsys.db`"),
    )
    sources_file: Path = Field(
        default=Path("recsys.toml"),
        json_schema_extra=_doc(
            "the database sources: a TOML file, or a folder of one TOML file per source",
            "`./recsys.toml`",
        ),
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        json_schema_extra=_doc("PyTorch threads for training and evaluation", "all cores"),
    )
    device: str = Field(
        default="auto",
        json_schema_extra=_doc(
            "where training and evaluation run: `auto` (CUDA when there is a GPU, else the "
            "CPU), `cpu`, `cuda` or `cuda:N`; `recsys train --set device=...` wins",
            "`auto`",
        ),
    )
    train_window_days: float | None = Field(
        default=None,
        gt=0,
        json_schema_extra=_doc(
            "train on the events of the last N days only (older events still make up the "
            "users' histories when serving)",
            "all events",
        ),
    )
    recency_half_life_days: float | None = Field(
        default=None,
        gt=0,
        json_schema_extra=_doc(
            "models that can weigh their training events by recency (EASE) weigh each "
            "user-item pair by 0.5 ** (age / N days), its age counted to the newest training "
            "event; `recsys train --set half_life_days=...` wins",
            "every event weighs the same",
        ),
    )
    refit: bool = Field(
        default=False,
        json_schema_extra=_doc(
            "after the gate promotes a candidate, train it again on every event (the ones held "
            "out for validation and test included: a user's newest) with the settings and "
            "epochs it chose, and serve that refit; the measured version's metrics stand for it",
            "off",
        ),
    )
    train_workers: int | None = Field(
        default=None,
        ge=1,
        json_schema_extra=_doc("candidates trained at once by the retrain flow", "half the cores"),
    )
    batch_workers: int = Field(
        default=1,
        ge=1,
        le=256,
        json_schema_extra=_doc(
            "Dask worker processes of a local cluster the batch flow scores on (1: in the "
            "flow's own process)",
            "`1`",
        ),
    )
    dask_address: str | None = Field(
        default=None,
        json_schema_extra=_doc(
            "address of a running Dask scheduler the batch flow scores on instead "
            "(e.g. `tcp://scheduler:8786`)",
            "unset",
        ),
    )
    ann_min_items: int = Field(
        # benchmarks/ann.py: on 2 cores exact scoring of 8 concurrent requests stays under a
        # p99 of 50 ms up to 100,000 items and no longer does at 150,000.
        default=150_000,
        ge=1,
        json_schema_extra=_doc(
            "catalogue size from which a sequence model is also exported with its user encoder "
            "and an item index (checked at registration: recall@10 >= 0.95), and served "
            "through the index instead of scoring every item",
            "`150000`",
        ),
    )
    service_url: str | None = Field(
        default=None,
        json_schema_extra=_doc("service the retrain flow tells to reload on promotion", "unset"),
    )
    api_key: SecretStr | None = Field(
        default=None,
        json_schema_extra=_doc(
            "the key clients started here send to the service (the dashboard's explorer: a "
            "`read` key), from the environment",
            "unset",
        ),
    )
    poll_seconds: float = Field(
        default=10.0,
        ge=0,
        json_schema_extra=_doc(
            "how often the service checks the champion alias and the catalogue's revision",
            "`10`",
        ),
    )
    reload_retry_seconds: float = Field(
        default=60.0,
        ge=0,
        json_schema_extra=_doc(
            "wait before the poller retries a version that failed to load", "`60`"
        ),
    )
    scorer_threads: int = Field(
        default=1,
        ge=0,
        json_schema_extra=_doc("onnxruntime intra-op threads per request", "`1`"),
    )
    model_source: Literal["auto", "registry", "bento"] = Field(
        default="auto",
        json_schema_extra=_doc(
            "what the service starts on: `registry` (the champion), `bento` (the packaged "
            "model) or `auto` (the champion, else the packaged model)",
            "`auto`",
        ),
    )
    serve_tuning: str = Field(
        default=",".join(SERVE_TUNINGS),
        json_schema_extra=_doc(
            "what each service worker changes in its runtime, comma-separated: `timeout` "
            "(BentoML's request timeout cancels its timer when answered), `freeze` (the "
            "start-up heap moved out of the garbage collector's sight), `threshold` (fewer "
            "young collections); `none` for BentoML's and Python's defaults",
            "`timeout,freeze,threshold`",
        ),
    )
    admin_token: SecretStr | None = Field(
        default=None,
        json_schema_extra=_doc(
            "an extra admin credential of the service, from the environment", "unset"
        ),
    )
    operator: str | None = Field(
        default=None,
        max_length=200,
        json_schema_extra=_doc(
            "who this process acts for in the champion's history (a team, a job or a person)",
            "the OS user and host",
        ),
    )
    read_auth: Literal["required", "open"] = Field(
        default="required",
        json_schema_extra=_doc(
            "`required`: reads need a `read` key; `open`: reads need none", "`required`"
        ),
    )
    unknown_items: Literal["reject", "create"] = Field(
        default="reject",
        json_schema_extra=_doc(
            "`events` naming an item not in the catalogue: `reject` or `create`", "`reject`"
        ),
    )
    future_tolerance_seconds: float = Field(
        default=DEFAULT_FUTURE_TOLERANCE_SECONDS,
        ge=0,
        json_schema_extra=_doc("how far ahead of the server's clock an event may be", "`300`"),
    )
    max_body_bytes: int = Field(
        default=1_048_576,
        ge=0,
        json_schema_extra=_doc("largest request body the service reads", "`1048576`"),
    )
    body_timeout_seconds: float = Field(
        default=10.0,
        ge=0,
        json_schema_extra=_doc("time a request body has to arrive", "`10`"),
    )

    impression_buffer: int = Field(
        default=10_000,
        ge=0,
        json_schema_extra=_doc(
            "impressions the service holds before writing them (more are dropped and counted); "
            "`0` logs none",
            "`10000`",
        ),
    )
    impression_flush_seconds: float = Field(
        default=5.0,
        gt=0,
        json_schema_extra=_doc(
            "how often the service writes its buffered impressions (sooner when half the "
            "buffer waits)",
            "`5`",
        ),
    )
    attribution_window_seconds: float = Field(
        default=86_400.0,
        gt=0,
        json_schema_extra=_doc(
            "how long after an impression an event on a shown item is credited to it",
            "`86400`",
        ),
    )
    click_events: str = Field(
        default="click,view",
        json_schema_extra=_doc(
            "event types that count as a click in online metrics (comma-separated)",
            "`click,view`",
        ),
    )
    conversion_events: str = Field(
        default="purchase",
        json_schema_extra=_doc(
            "event types that count as a conversion in online metrics (comma-separated)",
            "`purchase`",
        ),
    )

    drift_window_seconds: float = Field(
        default=3600.0,
        gt=0,
        json_schema_extra=_doc(
            "the recent traffic the drift monitor compares with the champion's training",
            "`3600`",
        ),
    )
    drift_baseline_seconds: float = Field(
        default=86_400.0,
        gt=0,
        json_schema_extra=_doc(
            "the window just before the recent one whose click-through is the baseline",
            "`86400`",
        ),
    )
    drift_min_samples: int = Field(
        default=200,
        ge=1,
        json_schema_extra=_doc(
            "fewest requests, events or impressions a drift signal needs before it can trip",
            "`200`",
        ),
    )
    drift_unknown_users: float = Field(
        default=0.3,
        ge=0,
        le=1,
        json_schema_extra=_doc(
            "share of recent requests or events by users the champion was not trained on "
            "that trips a retrain",
            "`0.3`",
        ),
    )
    drift_unknown_items: float = Field(
        default=0.2,
        ge=0,
        le=1,
        json_schema_extra=_doc(
            "share of recent events on items the champion was not trained on that trips a retrain",
            "`0.2`",
        ),
    )
    drift_new_items: float = Field(
        default=0.1,
        ge=0,
        le=1,
        json_schema_extra=_doc(
            "share of the available catalogue added since the champion's snapshot that trips "
            "a retrain",
            "`0.1`",
        ),
    )
    drift_psi: float = Field(
        default=0.2,
        ge=0,
        json_schema_extra=_doc(
            "population stability index of recent events over items against the training "
            "popularity that trips a retrain",
            "`0.2`",
        ),
    )
    drift_ctr_drop: float = Field(
        default=0.2,
        ge=0,
        le=1,
        json_schema_extra=_doc(
            "relative fall of the champion's click-through from its baseline that trips a "
            "retrain (when also significant at `RECSYS_DRIFT_CTR_ALPHA`)",
            "`0.2`",
        ),
    )
    drift_ctr_alpha: float = Field(
        default=0.001,
        gt=0,
        lt=1,
        json_schema_extra=_doc(
            "significance level the click-through fall must reach (two-sided p-value); strict "
            "because the monitor tests again at every run",
            "`0.001`",
        ),
    )
    drift_cooldown_seconds: float = Field(
        default=43_200.0,
        ge=0,
        json_schema_extra=_doc(
            "least time between two retrains the drift monitor starts", "`43200`"
        ),
    )

    @field_validator("serve_tuning", mode="after")
    @classmethod
    def _serve_tuning(cls, value: str) -> str:
        names = [v.strip().lower() for v in value.split(",") if v.strip()]
        if names == ["none"]:
            return "none"
        unknown = sorted(set(names) - set(SERVE_TUNINGS))
        if unknown or not names:
            raise ValueError(f"name some of {', '.join(SERVE_TUNINGS)}, or none; got {value!r}")
        return ",".join(n for n in SERVE_TUNINGS if n in names)

    @property
    def serve_tunings(self) -> frozenset[str]:
        return (
            frozenset() if self.serve_tuning == "none" else frozenset(self.serve_tuning.split(","))
        )

    @field_validator("click_events", "conversion_events", mode="after")
    @classmethod
    def _event_types(cls, value: str) -> str:
        names = [v.strip() for v in value.split(",") if v.strip()]
        if not names:
            raise ValueError("name at least one event type")
        return ",".join(names)

    @field_validator("model_source", "read_auth", "unknown_items", "device", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("device", mode="after")
    @classmethod
    def _device(cls, value: str) -> str:
        if not DEVICE_PATTERN.fullmatch(value):
            raise ValueError("use auto, cpu, cuda or cuda:N")
        return value

    @field_validator("home", "sources_file", mode="after")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _embedded_database(self) -> Settings:
        """No ``RECSYS_DATABASE_URL``: the embedded SQLite database in the home."""
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{self.home / 'recsys.db'}")
        return self

    @property
    def rejects_dir(self) -> Path:
        return self.home / "rejects"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def admin_secret(self) -> str | None:
        """The admin token in clear, for the one place that compares or sends it."""
        return None if self.admin_token is None else self.admin_token.get_secret_value()

    @property
    def api_secret(self) -> str | None:
        """The API key in clear, for the one place that sends it."""
        return None if self.api_key is None else self.api_key.get_secret_value()


def get_settings(**overrides: Any) -> Settings:
    """Read the ``RECSYS_*`` variables now; ``overrides`` (field names) win over them."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = first["loc"][0] if first["loc"] else "?"
        name = str(where) if str(where).startswith(ENV_PREFIX) else _variable(str(where))
        raw = first.get("input")
        secret = name in (_variable("admin_token"), _variable("api_key"))
        shown = "" if secret else f", got {raw!r}"
        raise SettingsError(f"{name}: {first['msg'].lower()}{shown}") from None


def _variable(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def settings_table() -> str:
    """The markdown table of every setting (variable, meaning, default) the README shows."""
    lines = ["| variable | meaning | default |", "|---|---|---|"]
    for field, info in Settings.model_fields.items():
        extra = info.json_schema_extra
        assert isinstance(extra, dict), field
        lines.append(f"| `{_variable(field)}` | {extra['meaning']} | {extra['default_text']} |")
    return "\n".join(lines)


def variables() -> list[str]:
    """Every ``RECSYS_*`` variable a setting reads."""
    return [_variable(field) for field in Settings.model_fields]


if __name__ == "__main__":
    print(settings_table())
