"""The ORM tables: everything Tailor knows lives in these rows.

Schemas that cross the API (``XCreate`` / ``XPublic``) live in ``serving``;
these classes are storage only. Every change here needs an Alembic revision
in ``storage/migrations/versions`` (a test compares the two).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from storage.clock import utc_now

# Named constraints, so that migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend.

    SQLite has no time zones: values are stored as naive UTC and come back
    aware, so that comparisons never mix naive and aware datetimes.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONValue = JSON().with_variant(JSONB(), "postgresql")
# 64-bit row counters on PostgreSQL; SQLite only auto-increments INTEGER keys.
RowId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSONValue,
    }


class Scope(enum.StrEnum):
    USER = "user"
    ADMIN = "admin"


class AdapterKind(enum.StrEnum):
    SPECIALIST = "specialist"  # one user's expert
    GENERALIST = "generalist"  # shared by every user of a base model


class AdapterState(enum.StrEnum):
    TRAINING = "training"
    CANDIDATE = "candidate"
    ACTIVE = "active"
    RETIRED = "retired"
    FAILED = "failed"


class Decider(enum.StrEnum):
    """Who promoted or retired a version: a person's promotion of a version the gate
    held back is an override of the gate."""

    GATE = "gate"  # the fine-tune worker, on the evaluation gate's verdict
    USER = "user"  # the expert's owner, through /v1/adapters
    ADMIN = "admin"


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


def _enum(cls: type[enum.StrEnum]) -> Enum:
    # Stored as plain strings with a CHECK: adding a state later is a
    # migration of one constraint, not of a PostgreSQL enum type.
    return Enum(
        cls,
        name=cls.__name__.lower(),
        native_enum=False,
        create_constraint=True,
        length=32,
        values_callable=lambda members: [m.value for m in members],
    )


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    # The user's routing preferences; NULL: the service's default. A request's own win.
    route_cost_weight: Mapped[float | None] = mapped_column(Float, default=None)
    route_max_price: Mapped[float | None] = mapped_column(Float, default=None)
    route_latency_slo_seconds: Mapped[float | None] = mapped_column(Float, default=None)
    # An admin's reset of the user's influence on routing: the router ignores
    # the user's feedback with id <= route_reset_feedback_id (NULL: none
    # ignored). Feedback ids are handed out in commit order, so "up to this id"
    # is "everything the user had said when the reset happened".
    route_reset_feedback_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    route_reset_at: Mapped[datetime | None] = mapped_column(default=None)
    # An admin's settings of the fine-tune gate for this user's specialists (NULL: the
    # service's TAILOR_FINETUNE_MAX_GENERIC_RISE / _MAX_PROBE_LOSS): how far a style may
    # move ordinary text, and what share of the factual probes it may cost.
    finetune_max_generic_rise: Mapped[float | None] = mapped_column(Float, default=None)
    finetune_max_probe_loss: Mapped[float | None] = mapped_column(Float, default=None)

    api_keys: Mapped[list[ApiKey]] = relationship(
        back_populates="user", order_by="ApiKey.created_at", lazy="selectin"
    )


class ApiKey(Base):
    """A user's API key. Only the SHA-256 of the secret is stored.

    Keys carry 256 random bits, so a fast hash is enough (no password
    stretching needed) and lets a request find its key with one indexed read.
    """

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The first characters of the key, so that people can tell keys apart.
    prefix: Mapped[str] = mapped_column(String(16))
    scopes: Mapped[list[str]] = mapped_column(JSONValue)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)

    user: Mapped[User] = relationship(back_populates="api_keys")

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


class BaseModelRow(Base):
    """A base model in the model store that requests can be routed to.

    Named ``...Row`` (the other tables are not) because pydantic's ``BaseModel``
    is imported beside it in serving's schemas.
    """

    __tablename__ = "base_models"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    architecture: Mapped[str] = mapped_column(String(50))
    # Relative to the model store directory, so that the data dir can move.
    path: Mapped[str] = mapped_column(String(500))
    sha256: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(500))
    source_sha256: Mapped[str] = mapped_column(String(64))
    dtype: Mapped[str] = mapped_column(String(20))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    parameter_count: Mapped[int] = mapped_column(BigInteger)
    context_length: Mapped[int] = mapped_column(Integer)
    chat_template: Mapped[str | None] = mapped_column(Text, default=None)
    cost_per_million_tokens: Mapped[float] = mapped_column(Float)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(default=utc_now, onupdate=utc_now)


class Adapter(Base):
    """One adapter: a user's specialist or a base model's generalist.

    Its weights live in ``AdapterVersion`` rows; the adapter itself only says
    whose it is and for which base model. Its active version is what serving
    mixes in as an expert (docs/architecture.md, glossary).
    """

    __tablename__ = "adapters"
    __table_args__ = (
        UniqueConstraint("owner_key", "base_model_id", "kind", "name"),
        Index("ix_adapters_user_id_base_model_id", "user_id", "base_model_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[AdapterKind] = mapped_column(_enum(AdapterKind))
    # None for generalists, which belong to no user.
    user_id: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), default=None
    )
    # user_id, or "shared" for generalists: NULLs never collide in a UNIQUE
    # constraint, so uniqueness of names needs a non-null owner column.
    owner_key: Mapped[str] = mapped_column(String(32))
    base_model_id: Mapped[str] = mapped_column(ForeignKey("base_models.id"))
    name: Mapped[str] = mapped_column(String(100), default="default")
    created_at: Mapped[datetime] = mapped_column(default=utc_now)

    versions: Mapped[list[AdapterVersion]] = relationship(
        back_populates="adapter", order_by="AdapterVersion.version", lazy="selectin"
    )


class AdapterVersion(Base):
    """One trained set of weights of an expert, with its lifecycle state.

    A partial unique index allows at most one ``active`` version per expert,
    so the invariant holds in the database even if two promotions race.
    """

    __tablename__ = "adapter_versions"
    __table_args__ = (
        UniqueConstraint("adapter_id", "version"),
        Index(
            "uq_adapter_versions_one_active",
            "adapter_id",
            unique=True,
            sqlite_where=text("state = 'active'"),
            postgresql_where=text("state = 'active'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    adapter_id: Mapped[str] = mapped_column(ForeignKey("adapters.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    state: Mapped[AdapterState] = mapped_column(_enum(AdapterState))
    # Blob store key of the safetensors file; None while training.
    sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    rank: Mapped[int] = mapped_column(Integer)
    alpha: Mapped[float] = mapped_column(Float)
    target_modules: Mapped[list[str]] = mapped_column(JSONValue)
    eval_metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Lineage: the version this one was trained from or replaced.
    parent_version_id: Mapped[str | None] = mapped_column(
        ForeignKey("adapter_versions.id", ondelete="SET NULL"), default=None
    )
    # The active version this one replaced when it was promoted: what a
    # rollback returns to. Kept apart from lineage, which says what a version
    # was trained from.
    replaced_version_id: Mapped[str | None] = mapped_column(
        ForeignKey("adapter_versions.id", ondelete="SET NULL"), default=None
    )
    job_id: Mapped[str | None] = mapped_column(String(32), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    promoted_at: Mapped[datetime | None] = mapped_column(default=None)
    retired_at: Mapped[datetime | None] = mapped_column(default=None)
    # Who made the last promotion and retirement (``Decider`` values; NULL before 0007).
    promoted_by: Mapped[str | None] = mapped_column(String(20), default=None)
    retired_by: Mapped[str | None] = mapped_column(String(20), default=None)

    adapter: Mapped[Adapter] = relationship(back_populates="versions")


class TrainingExample(Base):
    __tablename__ = "training_examples"
    __table_args__ = (Index("ix_training_examples_user_created", "user_id", "created_at"),)

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    messages: Mapped[list[dict[str, Any]]] = mapped_column(JSONValue)
    # "api" for uploaded examples, "feedback" for positively rated answers.
    source: Mapped[str] = mapped_column(String(20), default="api")
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class Response(Base):
    """A completion Tailor returned, kept so that feedback can refer to it."""

    __tablename__ = "responses"
    __table_args__ = (Index("ix_responses_user_created", "user_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    base_model_id: Mapped[str] = mapped_column(ForeignKey("base_models.id"))
    endpoint: Mapped[str] = mapped_column(String(40))
    request: Mapped[dict[str, Any]] = mapped_column()
    output_text: Mapped[str] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(String(20), default=None)
    routing_decision: Mapped[dict[str, Any]] = mapped_column()
    adapters_used: Mapped[list[dict[str, Any]]] = mapped_column(JSONValue)
    # The router's embedding of the query (float32 bytes), for local ratings.
    query_embedding: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms: Mapped[float | None] = mapped_column(Float, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class Feedback(Base):
    """A rating of one response, or a preference of one response over another."""

    __tablename__ = "feedback"
    __table_args__ = (
        # "The same feedback twice counts once": the key names what was judged.
        UniqueConstraint("user_id", "dedupe_key"),
        Index("ix_feedback_user_created", "user_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    response_id: Mapped[str] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"))
    rating: Mapped[int | None] = mapped_column(Integer, default=None)
    preferred_over_id: Mapped[str | None] = mapped_column(
        ForeignKey("responses.id", ondelete="CASCADE"), default=None
    )
    dedupe_key: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class RoutingRating(Base):
    """A snapshot of the router's rating of one base model in one scope.

    ``scope`` is ``global`` or ``user:<id>``. The feedback log is the truth;
    these rows let the router start without replaying all of it.
    """

    __tablename__ = "routing_ratings"

    scope: Mapped[str] = mapped_column(String(64), primary_key=True)
    base_model_id: Mapped[str] = mapped_column(
        ForeignKey("base_models.id", ondelete="CASCADE"), primary_key=True
    )
    rating: Mapped[float] = mapped_column(Float)
    games: Mapped[int] = mapped_column(Integer, default=0)
    # The id of the last feedback row folded into this rating.
    last_feedback_id: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utc_now, onupdate=utc_now)


class FineTuneJob(Base):
    """A fine-tune job; the table is the queue's source of truth.

    A worker owns a running job while ``lease_expires_at`` is in the future;
    ``attempt`` fences writes from a worker whose lease was taken over.
    """

    __tablename__ = "finetune_jobs"
    __table_args__ = (
        UniqueConstraint("user_id", "idempotency_key"),
        Index("ix_finetune_jobs_state_run_after", "state", "run_after"),
        Index("ix_finetune_jobs_user_created", "user_id", "created_at"),
        # At most one running job per expert, enforced by the database.
        Index(
            "uq_finetune_jobs_one_running",
            "target_key",
            unique=True,
            sqlite_where=text("state = 'running'"),
            postgresql_where=text("state = 'running'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # None for generalist jobs, which train on every user's data.
    user_id: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), default=None
    )
    kind: Mapped[AdapterKind] = mapped_column(_enum(AdapterKind))
    base_model_id: Mapped[str] = mapped_column(ForeignKey("base_models.id"))
    adapter_id: Mapped[str | None] = mapped_column(
        ForeignKey("adapters.id", ondelete="SET NULL"), default=None
    )
    # Names the expert being trained (e.g. "specialist:usr_..:gemma-3-270m").
    target_key: Mapped[str] = mapped_column(String(200))
    state: Mapped[JobState] = mapped_column(_enum(JobState), default=JobState.QUEUED)
    trigger: Mapped[str] = mapped_column(String(20), default="api")
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    run_after: Mapped[datetime] = mapped_column(default=utc_now)
    lease_owner: Mapped[str | None] = mapped_column(String(200), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    result_version_id: Mapped[str | None] = mapped_column(
        ForeignKey("adapter_versions.id", ondelete="SET NULL"), default=None
    )
    # For a job that succeeded: what became of its version, "promoted" or "held_back",
    # and why it was held back (the gate's reasons, or that promotion is by hand).
    outcome: Mapped[str | None] = mapped_column(String(20), default=None)
    outcome_reason: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    # A job of the OpenAI-shaped API trains on these uploaded files (``TrainingFile``)
    # instead of the user's examples; plain ids, not keys: a job keeps naming its file
    # after the file is deleted, as OpenAI's jobs do. ``suffix`` names its model (ft:...).
    training_file_id: Mapped[str | None] = mapped_column(String(40), default=None)
    validation_file_id: Mapped[str | None] = mapped_column(String(40), default=None)
    suffix: Mapped[str | None] = mapped_column(String(64), default=None)


class JobEvent(Base):
    """Progress of a job (step, loss, tokens/s, eval, promotion), in order."""

    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("finetune_jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(20))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class TrainingFile(Base):
    """A JSON Lines file of chat conversations a user uploaded to fine-tune on
    (``POST /v1/files``), validated line by line before it is stored.

    ``content`` is the file as uploaded (what ``/content`` returns); ``conversations``
    the same lines parsed, what a job's worker trains on. Both are deferred: listing
    files never reads them.
    """

    __tablename__ = "training_files"
    __table_args__ = (Index("ix_training_files_user_created", "user_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    purpose: Mapped[str] = mapped_column(String(20))
    filename: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    conversation_count: Mapped[int] = mapped_column(Integer)
    content: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    conversations: Mapped[list[list[dict[str, Any]]]] = mapped_column(JSONValue, deferred=True)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class AdminSessionRecord(Base):
    """A dashboard sign-in: the record that says whether its cookie still counts.

    A session is live only while its row exists, is not ended and has not
    expired; the signed cookie merely names the row. Sign-out sets
    ``ended_at``, so that it outlives any cache flush or restart.
    """

    __tablename__ = "admin_sessions"

    # The random id in the cookie; the cookie's signature, not this id, is the secret.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The stored admin key that signed in, or None for the bootstrap key.
    key_id: Mapped[str | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), default=None, index=True
    )
    # For the bootstrap key: a hash of it, so that rotating it ends its sessions.
    key_fingerprint: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    ended_at: Mapped[datetime | None] = mapped_column(default=None)
