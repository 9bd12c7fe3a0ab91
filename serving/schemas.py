"""Request and response bodies of the API (``XCreate`` in, ``XPublic`` out).

Kept apart from the ORM tables: what clients see is a contract (docs/api.md),
what the database holds may change underneath it. Request bodies derive from
``RequestBody`` (no NUL, no lone surrogate) and stored strings are bounded by
their columns.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator, model_validator

from serving.request_text import RequestBody
from serving.routing_schemas import RoutingPreferencesPublic
from storage.repositories.users import MAX_GENERIC_RISE, MAX_PROBE_LOSS
from storage.tables import Adapter, AdapterKind, AdapterState, Scope, User

AUTO_MODEL_ID = "auto"


T = TypeVar("T")


class ListPublic(BaseModel, Generic[T]):
    """An OpenAI-style list."""

    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool = False


# Errors ----------------------------------------------------------------------


class ErrorDetailPublic(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str
    # Derived from the status (serving.errors.ERROR_TYPES), "server_error" for 5xx.
    type: str
    # A stable reason (docs/api.md, section 1.6), or null where none applies.
    code: str | None


class ErrorPublic(BaseModel):
    """Every error of the JSON API: the OpenAI error shape (serving.errors.error_body)."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetailPublic


# The `responses` of every API route in the OpenAPI schema: whatever the status, an error
# has the shape above (this also replaces FastAPI's own 422 body, which Tailor never sends).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorPublic, "description": "A client error (docs/api.md, section 1.6)"},
    "5XX": {"model": ErrorPublic, "description": "A server error, or a backend unavailable"},
}


# Users and keys ------------------------------------------------------------


class UserCreate(RequestBody):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)  # users.name is String(200)
    scopes: list[Scope] = Field(
        default_factory=lambda: [Scope.USER], min_length=1, max_length=len(Scope)
    )

    @field_validator("name")
    @classmethod
    def _strip(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be blank")
        return value


class ApiKeyCreate(RequestBody):
    model_config = ConfigDict(extra="forbid")

    scopes: list[Scope] = Field(
        default_factory=lambda: [Scope.USER], min_length=1, max_length=len(Scope)
    )


class ApiKeyPublic(BaseModel):
    """A key as it is shown after creation: never the secret, only its prefix."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    user_id: str
    prefix: str
    scopes: list[Scope]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    revoked: bool


class ApiKeyCreated(ApiKeyPublic):
    """A new key; ``api_key`` is shown this once and stored only as a hash."""

    api_key: str


class UserPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    created_at: datetime
    keys: list[ApiKeyPublic] = Field(validation_alias="api_keys")
    routing: RoutingPreferencesPublic

    @model_validator(mode="before")
    @classmethod
    def _from_user(cls, data: Any) -> Any:
        # The preferences are three columns of the table, one object here.
        if isinstance(data, User):
            return {
                "id": data.id,
                "name": data.name,
                "created_at": data.created_at,
                "api_keys": data.api_keys,
                "routing": RoutingPreferencesPublic.of(data),
            }
        return data


class AdminUserDetail(UserPublic):
    """One user as the dashboard shows them: with how much they have taught Tailor."""

    feedback_count: int
    example_count: int
    # The user's own fine-tune gate limits (null: the service's setting).
    max_generic_rise: float | None = None
    max_probe_loss: float | None = None


class FineTuningLimitsPublic(BaseModel):
    """A user's own fine-tune gate limits, and those their jobs are judged by."""

    user_id: str
    # Null: the service's TAILOR_FINETUNE_MAX_GENERIC_RISE / _MAX_PROBE_LOSS applies.
    max_generic_rise: float | None
    max_probe_loss: float | None
    effective_max_generic_rise: float
    effective_max_probe_loss: float


class FineTuningLimitsUpdate(RequestBody):
    """PATCH: the limits sent are set (null returns one to the service's setting), the
    others stay. ``max_generic_rise``: how far this user's specialists may raise the
    generic-text NLL over the base model's (0.25: 25%); ``max_probe_loss``: the share of
    the factual probes they may lose (0.1: 3 of 30)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_generic_rise: float | None = Field(default=None, ge=0.0, le=MAX_GENERIC_RISE)
    max_probe_loss: float | None = Field(default=None, ge=0.0, le=MAX_PROBE_LOSS)

    @model_validator(mode="after")
    def _something_to_set(self) -> FineTuningLimitsUpdate:
        if not self.model_fields_set:
            raise ValueError("give max_generic_rise or max_probe_loss (null clears one)")
        return self

    def changes(self) -> dict[str, float | None]:
        return {name: getattr(self, name) for name in self.model_fields_set}


class UserCreated(BaseModel):
    id: str
    name: str
    created_at: datetime
    key_id: str
    api_key: str


# Models ----------------------------------------------------------------------


class ModelPublic(BaseModel):
    """An entry of ``GET /v1/models``: the OpenAI fields plus Tailor's own."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tailor"
    architecture: str | None = None
    parameters: int | None = None
    context_length: int | None = None
    chat: bool | None = None
    cost_per_million_tokens: float | None = None
    # A fine-tuned model's base model (ft:...); null for the others.
    parent: str | None = None


class BaseModelCreate(RequestBody):
    """``POST /admin/models``: a model of the server's file system to add to the store.

    The ranges of the numbers are checked where the model is added
    (``models.store.add.AddOptions``), so that the CLI and the API refuse alike.
    """

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=100)  # base_models.id is String(100)
    path: str = Field(
        min_length=1,
        max_length=4096,
        description="A directory of a Hugging Face model (safetensors) or a .gguf file, "
        "as the server sees it.",
    )
    price: float | None = Field(default=None, description="Per 1M tokens.")
    context_length: int | None = None
    chat_template: str | None = Field(
        default=None,
        max_length=1_000_000,
        description="A Jinja chat template to use instead of the model's own.",
    )
    no_chat_template: bool = Field(
        default=False, description="Store it without a chat template (a text-continuing model)."
    )
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None

    @field_validator("path")
    @classmethod
    def _absolute(cls, path: str) -> str:
        # Relative to what? The server's working directory means nothing to a client.
        if not path.startswith("/"):
            raise ValueError("must be an absolute path on the server")
        return path

    @model_validator(mode="after")
    def _one_template_choice(self) -> BaseModelCreate:
        if self.no_chat_template and self.chat_template is not None:
            raise ValueError("give chat_template or no_chat_template, not both")
        return self


class BaseModelAdded(ModelPublic):
    """A model just added: its entry, where it came from, and whether this process serves
    it already (false under Ray Serve, before the models are loaded, or when
    ``TAILOR_MODELS`` leaves it out)."""

    source: str
    served: bool


class BaseModelDeleted(BaseModel):
    """``DELETE /admin/models/{model_id}``, in OpenAI's shape of a deleted model."""

    id: str
    object: Literal["model"] = "model"
    deleted: bool = True


# Adapters --------------------------------------------------------------------


class AdapterVersionPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    adapter_id: str
    version: int
    state: AdapterState
    sha256: str | None
    size_bytes: int | None
    rank: int
    alpha: float
    target_modules: list[str]
    eval_metrics: dict[str, Any]
    parent_version_id: str | None
    replaced_version_id: str | None
    job_id: str | None
    created_at: datetime
    promoted_at: datetime | None
    retired_at: datetime | None
    # Who decided: "gate", "user" or "admin" (None for versions decided before this was kept).
    promoted_by: str | None = None
    retired_by: str | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def overrode_gate(self) -> bool:
        """A person promoted a version the evaluation gate had held back."""
        judged = self.eval_metrics.get("promote")
        return self.promoted_by in ("user", "admin") and judged is False


class AdapterPublic(BaseModel):
    """An adapter; ``version``/``state``/``eval_metrics`` are those of its current
    version (the active one, else the newest)."""

    id: str
    object: Literal["adapter"] = "adapter"
    kind: AdapterKind
    user_id: str | None
    base_model: str
    name: str
    created_at: datetime
    version: int | None
    state: AdapterState | None
    eval_metrics: dict[str, Any]
    active_version_id: str | None
    versions: list[AdapterVersionPublic]

    @classmethod
    def from_adapter(cls, adapter: Adapter) -> AdapterPublic:
        versions = [AdapterVersionPublic.model_validate(v) for v in adapter.versions]
        active = next((v for v in versions if v.state is AdapterState.ACTIVE), None)
        current = active or (versions[-1] if versions else None)
        return cls(
            id=adapter.id,
            kind=adapter.kind,
            user_id=adapter.user_id,
            base_model=adapter.base_model_id,
            name=adapter.name,
            created_at=adapter.created_at,
            version=current.version if current else None,
            state=current.state if current else None,
            eval_metrics=current.eval_metrics if current else {},
            active_version_id=active.id if active else None,
            versions=versions,
        )


# Health ----------------------------------------------------------------------


class OverviewPointPublic(BaseModel):
    """One chart point (serving.metrics_history.point_between): per minute since the last."""

    # Built from the sampler's dicts: a field added there and not here fails the tests.
    model_config = ConfigDict(extra="forbid")

    t: float
    requests_per_minute: float
    prompt_tokens_per_minute: float
    completion_tokens_per_minute: float
    tokens_per_minute: float
    latency_p50_s: float | None
    latency_p99_s: float | None
    routing_per_minute: dict[str, float]
    cost_per_minute: float
    cost_total: float
    cache_hit_rate: float | None
    queue_depth: int
    running_requests: int
    jobs: dict[str, int]


class OverviewPublic(BaseModel):
    """``GET /admin/overview``: chart points (serving.metrics_history), oldest first."""

    bucket_seconds: float
    now: float
    points: list[OverviewPointPublic]


class HealthPublic(BaseModel):
    status: str


class ReadinessPublic(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, str]
