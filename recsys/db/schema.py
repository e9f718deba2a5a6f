"""SQLAlchemy 2 typed tables: users, items, interactions, import runs and the model registry.

Times of events are Unix epoch milliseconds in UTC (BIGINT): one unambiguous unit on SQLite
and PostgreSQL, exact in uniqueness checks, and cheap to extract into numpy.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments an INTEGER PRIMARY KEY, so 64-bit keys fall back to INTEGER there.
BigIntKey = BigInteger().with_variant(Integer(), "sqlite")
# None is stored as SQL NULL, not as the JSON literal null.
JSONType = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    """A user by external id, with the demographics a dataset provides."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(255), unique=True)
    age: Mapped[int | None] = mapped_column(Integer)
    gender: Mapped[str | None] = mapped_column(String(32))
    occupation: Mapped[str | None] = mapped_column(String(64))
    zip_code: Mapped[str | None] = mapped_column(String(32))
    attributes: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Item(Base):
    """A catalogue item by external id, with its descriptive attributes.

    ``available`` false (out of stock, withdrawn, deleted in its source) keeps the item and its
    history but takes it out of every recommendation. ``source`` names the database source
    that last described it (None for files and the API).
    """

    __tablename__ = "items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(255), unique=True)
    title: Mapped[str | None] = mapped_column(Text)
    genres: Mapped[list[str] | None] = mapped_column(JSONType)
    year: Mapped[int | None] = mapped_column(Integer)
    price: Mapped[float | None] = mapped_column(Numeric(12, 2, asdecimal=False))
    available: Mapped[bool] = mapped_column(Boolean, server_default=true())
    source: Mapped[str | None] = mapped_column(String(128), index=True)
    attributes: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ImportRun(Base):
    """One run of an importer: what was read, loaded and rejected, and where the rejects went."""

    __tablename__ = "imports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    rows_read: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_inserted: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_rejected: Mapped[int] = mapped_column(BigInteger, default=0)
    # Events whose time is earlier than the user's previous event in the file's own order.
    rows_out_of_order: Mapped[int] = mapped_column(BigInteger, default=0)
    rejects_by_reason: Mapped[dict[str, int] | None] = mapped_column(JSONType)
    rejects_path: Mapped[str | None] = mapped_column(Text)


class Interaction(Base):
    """One event: a user did ``event_type`` to an item at ``occurred_at`` (epoch ms, UTC).

    The same (user, item, event type, time) is one event however often it is imported, which
    makes re-imports a no-op. That unique index leads with (user, time), so it also serves
    per-user history in time order; a second index serves reads by time (recent events,
    training windows).

    On PostgreSQL that second index is a BRIN index (the smallest and largest time of each
    range of table pages), not a B-tree: events arrive roughly in time order, so the ranges
    are narrow, and inserting 1M events costs the server a third less (a B-tree on the time
    took 3.8 s of 9.4 s: a batch is written in user order, which lands its times all over
    that tree). Rows of a historical file loaded out of time order make the ranges wide,
    and a read by time then scans more of the table.

    There are no foreign keys on this table: the loader creates every referenced user and item
    in the same transaction, and on PostgreSQL the per-row FK triggers cost 5.7 s of 13.2 s
    when inserting 1M events. Extraction reports any orphan row it finds.
    """

    __tablename__ = "interactions"
    __table_args__ = (
        UniqueConstraint("user_id", "occurred_at", "item_id", "event_type"),
        Index(
            None,
            "occurred_at",
            postgresql_using="brin",
            postgresql_with={"autosummarize": "on"},
        ),
    )

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True)
    user_id: Mapped[int] = mapped_column(Integer)
    item_id: Mapped[int] = mapped_column(Integer)
    event_type: Mapped[str] = mapped_column(String(32))
    value: Mapped[float | None] = mapped_column(Float)
    occurred_at: Mapped[int] = mapped_column(BigInteger)
    import_id: Mapped[int | None] = mapped_column(Integer)


class ModelVersion(Base):
    """One registered model version: what it is, what it was trained on and how it scored.

    ``status`` is ``pending`` while the artifact is written (invisible to every reader),
    ``ready`` when servable, ``unservable`` when the ONNX graph failed parity, ``failed`` when
    registration raised, ``abandoned`` when a crashed registration was swept up.
    """

    __tablename__ = "model_versions"
    # SQLite: AUTOINCREMENT, so a number is never reused even after a failed registration.
    __table_args__ = (
        Index(None, "status"),
        Index(None, "snapshot_digest"),
        {"sqlite_autoincrement": True},
    )

    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    family: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    registered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    params: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    train_config: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    training: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    protocol: Mapped[str | None] = mapped_column(String(16))
    evaluated_users: Mapped[int | None] = mapped_column(Integer)
    eval_digest: Mapped[str | None] = mapped_column(String(64))
    snapshot: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    snapshot_digest: Mapped[str | None] = mapped_column(String(64))
    item_map_digest: Mapped[str | None] = mapped_column(String(64))
    artifact_path: Mapped[str | None] = mapped_column(Text)
    onnx_sha256: Mapped[str | None] = mapped_column(String(64))
    opset: Mapped[int | None] = mapped_column(Integer)
    parity: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    gate: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    code_version: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)


class ModelAlias(Base):
    """A named pointer (``champion``, ``challenger``) at a model version."""

    __tablename__ = "model_aliases"

    alias: Mapped[str] = mapped_column(String(32), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, ForeignKey("model_versions.version"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AliasEvent(Base):
    """Every move of an alias: who or what moved it, when, from which version, to which, why."""

    __tablename__ = "alias_events"
    __table_args__ = (Index(None, "alias", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alias: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(16))  # promote | rollback
    from_version: Mapped[int | None] = mapped_column(Integer, ForeignKey("model_versions.version"))
    to_version: Mapped[int] = mapped_column(Integer, ForeignKey("model_versions.version"))
    actor: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Recommendation(Base):
    """One slot of a precomputed top-k list (batch scoring); a batch replaces the previous."""

    __tablename__ = "recommendations"
    __table_args__ = (UniqueConstraint("user_id", "rank"),)

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True)
    user_id: Mapped[str] = mapped_column(String(255))
    rank: Mapped[int] = mapped_column(Integer)
    item_id: Mapped[str] = mapped_column(String(255))
    score: Mapped[float] = mapped_column(Float)
    model_version: Mapped[int] = mapped_column(Integer)
    batch_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Lock(Base):
    """A named lock held by one process (one retrain at a time), with when and by whom."""

    __tablename__ = "locks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))
    acquired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ApiKey(Base):
    """A credential of the prediction API: only a hash of the secret is stored.

    ``prefix`` is the key's public part (shown in listings, used to find the row); ``scopes``
    a comma-separated subset of read, events, admin.
    """

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    secret_sha256: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SourceWatermark(Base):
    """How far ``recsys sources sync`` has read a source: the watermark column's last value.

    ``value`` is the column's value as text and ``value_type`` how to read it back (int,
    float, decimal, datetime, date or text); a row moves only after the rows up to it are
    stored, so a crash in between makes the next sync re-read rows that are already stored.
    """

    __tablename__ = "source_watermarks"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    column_name: Mapped[str] = mapped_column(String(255))
    value: Mapped[str] = mapped_column(Text)
    value_type: Mapped[str] = mapped_column(String(16))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CatalogueState(Base):
    """One row: ``revision`` moves with every write to the items' descriptions or
    availability, so a reader (the prediction service) knows when to read the catalogue
    again without reading it."""

    __tablename__ = "catalogue_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    revision: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Impression(Base):
    """One list the prediction API answered: what was shown, to whom, by which model.

    ``id`` is the ``recommendation_id`` of the response; ``items`` are the external item ids
    in rank order; ``shown_at`` is epoch ms (UTC) like events. ``user_id`` (external) for a
    ``recommend`` call, ``session_id`` for an anonymous one, ``item_id`` for ``similar_items``.
    ``arm`` is ``champion`` or ``challenger`` while an experiment runs, else null.
    """

    __tablename__ = "impressions"
    __table_args__ = (Index(None, "user_id", "shown_at"), Index(None, "shown_at"))

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    shown_at: Mapped[int] = mapped_column(BigInteger)
    endpoint: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[str | None] = mapped_column(String(255))
    session_id: Mapped[str | None] = mapped_column(String(255))
    item_id: Mapped[str | None] = mapped_column(String(255))
    model_version: Mapped[int] = mapped_column(Integer)
    experiment_id: Mapped[int | None] = mapped_column(Integer)
    arm: Mapped[str | None] = mapped_column(String(16))
    fallback: Mapped[str | None] = mapped_column(String(16))
    items: Mapped[list[str]] = mapped_column(JSONType)


class EventRecommendation(Base):
    """The ``recommendation_id`` an event named when it was recorded (the event itself stays
    in ``interactions`` unchanged)."""

    __tablename__ = "event_recommendations"

    interaction_id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=False)
    recommendation_id: Mapped[str] = mapped_column(String(32), index=True)


class Attribution(Base):
    """Which impression an event is credited to: the one it named, else the latest impression
    that showed its item to its user within the attribution window. Derived: rebuilt from
    ``impressions``, ``interactions`` and ``event_recommendations`` by
    :func:`recsys.online.attribution.attribute`."""

    __tablename__ = "attributions"

    interaction_id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=False)
    impression_id: Mapped[str] = mapped_column(String(32), index=True)
    rank: Mapped[int] = mapped_column(Integer)
    event_type: Mapped[str] = mapped_column(String(32))
    occurred_at: Mapped[int] = mapped_column(BigInteger, index=True)
    named: Mapped[bool] = mapped_column(Boolean)


class Experiment(Base):
    """A champion-versus-challenger experiment: ``share`` of the users (by a stable hash of
    their id, or of the session id, with ``salt``) are answered by ``challenger_version``.
    At most one is ``running`` (a partial unique index says so); stopping records the
    decision (``promote`` or ``keep``), who made it, why, and the numbers it rested on."""

    __tablename__ = "experiments"
    __table_args__ = (
        Index(
            "uq_experiments_one_running",
            "status",
            unique=True,
            sqlite_where=text("status = 'running'"),
            postgresql_where=text("status = 'running'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    champion_version: Mapped[int] = mapped_column(Integer)
    challenger_version: Mapped[int] = mapped_column(Integer)
    share: Mapped[float] = mapped_column(Float)
    salt: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_by: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(Text)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    decision: Mapped[str | None] = mapped_column(String(16))
    decided_by: Mapped[str | None] = mapped_column(String(255))
    decision_reason: Mapped[str | None] = mapped_column(Text)
    results: Mapped[dict[str, Any] | None] = mapped_column(JSONType)


class DriftTrigger(Base):
    """A retrain the drift monitor started (or tried to): when, on which champion, the
    signals that tripped, and the Prefect run. The cool-down reads it: a trigger not
    ``failed`` within the cool-down holds back the next. ``status`` is ``claimed`` (the
    cool-down is taken, the run not yet created), ``started`` (``retrain_run_id`` set) or
    ``failed`` (the run could not be created: ``error``; it does not hold the cool-down)."""

    __tablename__ = "drift_triggers"
    __table_args__ = (Index(None, "triggered_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    triggered_at: Mapped[int] = mapped_column(BigInteger)
    champion_version: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    signals: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    deployment: Mapped[str | None] = mapped_column(String(255))
    monitor_run_id: Mapped[str | None] = mapped_column(String(64))
    retrain_run_id: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)


class TunedSetting(Base):
    """The best trial of a tuning study (``recsys tune``): the settings it found for a model
    family on one data snapshot and split, with its validation score (never a test score),
    how many trials the study had and how long this run took. The retrain trains each
    candidate with the latest row of its family. The trials themselves are Optuna's, in
    its own tables (``recsys.tuning.storage``)."""

    __tablename__ = "tuned_settings"
    __table_args__ = (Index(None, "family", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    family: Mapped[str] = mapped_column(String(64))
    protocol: Mapped[str] = mapped_column(String(16))
    snapshot_digest: Mapped[str] = mapped_column(String(64))
    study_name: Mapped[str] = mapped_column(String(255))
    params: Mapped[dict[str, Any]] = mapped_column(JSONType)
    metric: Mapped[str] = mapped_column(String(32))
    best_valid: Mapped[float] = mapped_column(Float)
    best_trial: Mapped[int] = mapped_column(Integer)
    trials: Mapped[int] = mapped_column(Integer)
    pruned: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# Core-level handles for bulk statements (the ORM classes type ``__table__`` loosely).
users_table = cast(Table, User.__table__)
items_table = cast(Table, Item.__table__)
imports_table = cast(Table, ImportRun.__table__)
interactions_table = cast(Table, Interaction.__table__)
model_versions_table = cast(Table, ModelVersion.__table__)
model_aliases_table = cast(Table, ModelAlias.__table__)
alias_events_table = cast(Table, AliasEvent.__table__)
recommendations_table = cast(Table, Recommendation.__table__)
locks_table = cast(Table, Lock.__table__)
api_keys_table = cast(Table, ApiKey.__table__)
source_watermarks_table = cast(Table, SourceWatermark.__table__)
catalogue_state_table = cast(Table, CatalogueState.__table__)
impressions_table = cast(Table, Impression.__table__)
event_recommendations_table = cast(Table, EventRecommendation.__table__)
attributions_table = cast(Table, Attribution.__table__)
experiments_table = cast(Table, Experiment.__table__)
drift_triggers_table = cast(Table, DriftTrigger.__table__)
tuned_settings_table = cast(Table, TunedSetting.__table__)
