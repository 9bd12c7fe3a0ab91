"""Tailor's one settings object, read from ``TAILOR_*`` environment variables.

Why here: the settings are the application's, so they live at its top, in the
layer that starts processes (``serving``: the CLI, the API, Ray Serve). A lower
layer never sees the whole object; it is handed its own group, or plain values:

- ``settings.server``: the HTTP service: where it listens, the proxies it
  believes, request limits, the admin key and the dashboard (``ServerSettings``).
- ``settings.storage``: where state lives: data dir, model store, database, cache
  (``StorageSettings``, with the paths derived from the data dir).
- ``settings.router``: the ``auto`` router and the base models' prices
  (``RouterSettings``).
- ``settings.engine``: which base models are served and how: device, batching,
  limits, adapter slots, sampling defaults, Ray Serve replicas (``EngineSettings``).
- ``settings.finetune``: the fine-tune worker and its triggers. Declared in
  ``finetune/settings.py`` (``FinetuneSettings``) because that layer reads it and
  cannot import this one.

Invariants:

- Every field of every group names its environment variable as its
  ``validation_alias``, spelt in full (``TAILOR_ROUTER_K``); the names are flat and
  unchanged by the grouping, because operators, the Helm chart, the Dockerfile and
  the docs set them. ``setting_fields()`` lists them all; the settings source reads
  exactly those, so an unknown ``TAILOR_*`` variable is ignored.
- Built once at start-up by ``load_settings()`` (never at import) and passed down
  explicitly; nothing else in Tailor reads the environment for its own
  configuration. The object and its groups are frozen.
- A malformed value raises ``ConfigurationError`` naming its variable, so that the
  command line prints one line instead of a traceback.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, NamedTuple

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from finetune.settings import FinetuneSettings
from models.catalog import ModelPrices
from storage.errors import ConfigurationError

# Every variable's name starts with it; Ray Serve's replicas are handed every
# variable that does (serving/ray_serve.py).
ENV_PREFIX = "TAILOR_"

# The groups' common configuration: frozen, unknown fields refused (a misspelt
# override fails), given by field name (overrides) or by variable (the environment).
_GROUP_CONFIG = ConfigDict(
    extra="forbid", frozen=True, validate_by_name=True, validate_default=True
)


class RayModelDeployment(BaseModel):
    """One base model's Ray Serve resources and autoscaling bounds (``--ray``, Helm)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_cpus: float | None = Field(default=None, ge=0.0)
    # Fractions share a GPU between replicas of small models.
    num_gpus: float | None = Field(default=None, ge=0.0)
    # 0 lets Serve scale an idle model to nothing.
    min_replicas: int | None = Field(default=None, ge=0)
    max_replicas: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _bounds_are_ordered(self) -> RayModelDeployment:
        if (
            self.min_replicas is not None
            and self.max_replicas is not None
            and self.min_replicas > self.max_replicas
        ):
            raise ValueError("min_replicas is above max_replicas")
        return self


class GenerationOverride(BaseModel):
    """One base model's sampling defaults, overriding its generation config field by field.

    What a model leaves out comes from its ``generation_config.json``, then from
    Tailor's built-in defaults (serving/generation_defaults.py); a request's own
    fields win over all of them. The bounds are those of a request.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float | None = Field(default=None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, allow_inf_nan=False)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: tuple[Annotated[str, Field(min_length=1, max_length=1000)], ...] | None = Field(
        default=None, max_length=4
    )


class ServerSettings(BaseModel):
    """The HTTP service: where it listens, whom it believes, what it accepts, who administers it."""

    model_config = _GROUP_CONFIG

    host: str = Field(default="127.0.0.1", validation_alias="TAILOR_HOST")
    port: int = Field(default=8000, ge=1, le=65535, validation_alias="TAILOR_PORT")
    forwarded_allow_ips: str | None = Field(
        default=None,
        validation_alias="TAILOR_FORWARDED_ALLOW_IPS",
        description="Proxies whose X-Forwarded-For and X-Forwarded-Proto are believed: "
        "comma-separated IPs or CIDRs, or *; unset: none, the connecting address is the client.",
    )
    max_request_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        validation_alias="TAILOR_MAX_REQUEST_BYTES",
        description="Largest request body accepted (413 beyond, before it is parsed); "
        "POST /v1/examples and adapter uploads keep their own larger limits.",
    )
    rate_limit_requests_per_minute: float = Field(
        default=600.0,
        gt=0,
        validation_alias="TAILOR_RATE_LIMIT_REQUESTS_PER_MINUTE",
        description="Per user, refilled continuously.",
    )
    rate_limit_burst: float = Field(
        default=60.0,
        ge=1,
        validation_alias="TAILOR_RATE_LIMIT_BURST",
        description="Per user, at once.",
    )
    admin_key: SecretStr | None = Field(
        default=None,
        validation_alias="TAILOR_ADMIN_KEY",
        description="Bootstrap admin key (a Bearer token with admin scope); "
        "unset closes the admin API.",
    )
    admin_key_file: Path | None = Field(
        default=None,
        validation_alias="TAILOR_ADMIN_KEY_FILE",
        description="A file holding the bootstrap admin key (a mounted secret, or the "
        "var/admin-key that `make run` writes); read at start-up when TAILOR_ADMIN_KEY "
        "is unset.",
    )
    session_secret: SecretStr | None = Field(
        default=None,
        validation_alias="TAILOR_SESSION_SECRET",
        description="Signs the dashboard's session cookies; unset means one derived from "
        "the admin key (or, with no admin key, a random one per process). Set it when "
        "several processes serve the dashboard behind one address.",
    )
    admin_session_minutes: float = Field(
        default=480.0,
        gt=0,
        le=7 * 24 * 60,
        validation_alias="TAILOR_ADMIN_SESSION_MINUTES",
        description="How long a dashboard sign-in lasts.",
    )
    dashboard_sample_seconds: float = Field(
        default=10.0,
        gt=0,
        le=300,
        validation_alias="TAILOR_DASHBOARD_SAMPLE_SECONDS",
        description="How often the dashboard's overview charts take a point (one hour is kept).",
    )

    @field_validator("forwarded_allow_ips", mode="before")
    @classmethod
    def _proxies_are_addresses(cls, value: object) -> object:
        # Checked here because uvicorn takes a malformed entry as a literal
        # name that no peer matches, which would fail silently.
        if not isinstance(value, str):
            return value
        entries = [entry.strip() for entry in value.split(",") if entry.strip()]
        if not entries:
            return None
        if entries == ["*"]:
            return "*"
        for entry in entries:
            try:
                if "/" in entry:
                    ipaddress.ip_network(entry)
                else:
                    ipaddress.ip_address(entry)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or network (e.g. 10.0.0.0/8); "
                    "* alone trusts every peer"
                ) from None
        return ",".join(entries)


class StorageSettings(BaseModel):
    """Where the service's state lives, and the paths derived from the data dir."""

    model_config = _GROUP_CONFIG

    data_dir: Path = Field(
        default=Path("var"),
        validation_alias="TAILOR_DATA_DIR",
        description="Model store, adapter blobs and the default SQLite file.",
    )
    model_store: Path | None = Field(
        default=None,
        validation_alias="TAILOR_MODEL_STORE",
        description="Directory of prepared base models; unset means <data dir>/models.",
    )
    database_url: str | None = Field(
        default=None,
        validation_alias="TAILOR_DATABASE_URL",
        description="SQLAlchemy URL; unset means a SQLite file in the data dir.",
    )
    redis_url: str | None = Field(
        default=None,
        validation_alias="TAILOR_REDIS_URL",
        description="Redis URL; unset means an in-process cache.",
    )
    cache_prefix: str = Field(
        default="tailor:",
        validation_alias="TAILOR_CACHE_PREFIX",
        description="Prefix of every cache key and channel, "
        "so that one Redis can hold several installs.",
    )
    migrate_on_start: bool = Field(
        default=True,
        validation_alias="TAILOR_MIGRATE_ON_START",
        description="Bring the database schema to the newest revision when the service starts.",
    )

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'tailor.db').resolve()}"

    @property
    def model_store_dir(self) -> Path:
        return self.model_store if self.model_store is not None else self.data_dir / "models"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def router_snapshot_path(self) -> Path:
        return self.data_dir / "router" / "state.npz"


class RouterSettings(BaseModel):
    """The ``auto`` router (Eagle: arXiv 2409.15518; the paper's P, N and K by default)
    and the base models' prices it weighs."""

    model_config = _GROUP_CONFIG

    default_model: str | None = Field(
        default=None,
        validation_alias="TAILOR_DEFAULT_MODEL",
        description="Base model that answers `auto` until the router has feedback to learn "
        "from; unset: the cheapest that can serve the request.",
    )
    global_weight: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        validation_alias="TAILOR_ROUTER_GLOBAL_WEIGHT",
        description="P: weight of the global ELO against the local.",
    )
    neighbours: int = Field(
        default=20,
        ge=1,
        validation_alias="TAILOR_ROUTER_NEIGHBOURS",
        description="N: past queries the local ELO is replayed from.",
    )
    k: float = Field(
        default=32.0, gt=0, validation_alias="TAILOR_ROUTER_K", description="K: the ELO step."
    )
    user_full_votes: int = Field(
        default=1,
        ge=1,
        validation_alias="TAILOR_ROUTER_USER_FULL_VOTES",
        description="A user alone on the service, or voting in a burst, counts as this many "
        "votes in the routing every user gets. Their own routing learns from every vote.",
    )
    user_max_share: float = Field(
        default=0.05,
        ge=0.0,
        lt=1.0,
        validation_alias="TAILOR_ROUTER_USER_MAX_SHARE",
        description="While others vote, a user earns back this share of their weight as "
        "credit for their own votes in the shared routing estimate, up to "
        "TAILOR_ROUTER_USER_FULL_VOTES (0: a user counts as TAILOR_ROUTER_USER_FULL_VOTES "
        "votes in all).",
    )
    cost_weight: float = Field(
        default=0.1,
        ge=0.0,
        validation_alias="TAILOR_ROUTER_COST_WEIGHT",
        description="Lambda: quality given up per unit of cost (relative to the dearest "
        "candidate); users and requests may set their own.",
    )
    latency_slo_seconds: float | None = Field(
        default=30.0,
        gt=0,
        validation_alias="TAILOR_ROUTER_LATENCY_SLO_SECONDS",
        description="Latency objective the router avoids missing by moving load; unset: none.",
    )
    switch_confidence: float = Field(
        default=0.95,
        ge=0.5,
        lt=1.0,
        validation_alias="TAILOR_ROUTER_SWITCH_CONFIDENCE",
        description="`auto` leaves the incumbent (the base holding the user's specialist, "
        "else the default model, else the cheapest) only for a model better with at least "
        "this posterior probability.",
    )
    explore_rate: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        validation_alias="TAILOR_ROUTER_EXPLORE_RATE",
        description="Share of a user's `auto` requests that may explore (Thompson "
        "sampling); 0 turns exploration off.",
    )
    explore_max_regret: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        validation_alias="TAILOR_ROUTER_EXPLORE_MAX_REGRET",
        description="Most expected utility (P(good) units) one explored request may give up.",
    )
    expert_bonus: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        validation_alias="TAILOR_ROUTER_EXPERT_BONUS",
        description="Utility of a user's own specialist on a base model when its gain "
        "passed the evaluation gate (less for a smaller, unproven gain).",
    )
    snapshot_every: int = Field(
        default=10_000,
        ge=0,
        validation_alias="TAILOR_ROUTER_SNAPSHOT_EVERY",
        description="Write the router's learnt state to <data dir>/router/state.npz after "
        "this many new pieces of feedback (and at shutdown), so a restart replays only "
        "what came after; 0: never.",
    )
    sync_seconds: float = Field(
        default=2.0,
        gt=0,
        validation_alias="TAILOR_ROUTER_SYNC_SECONDS",
        description="How often a process picks up feedback stored by other processes.",
    )
    cost_per_billion_parameters: float = Field(
        default=1.0,
        gt=0,
        validation_alias="TAILOR_COST_PER_BILLION_PARAMETERS",
        description="Relative price per 1M tokens of a base model with 1B parameters; "
        "a model's default price is proportional to its parameter count.",
    )
    model_costs: dict[str, float] = Field(
        default_factory=dict,
        validation_alias="TAILOR_MODEL_COSTS",
        description='Per-model price overrides per 1M tokens, JSON: {"gemma-3-270m": 0.5}.',
    )

    @field_validator("model_costs")
    @classmethod
    def _costs_are_not_negative(cls, costs: dict[str, float]) -> dict[str, float]:
        negative = sorted(name for name, cost in costs.items() if cost < 0)
        if negative:
            raise ValueError(f"negative price for {', '.join(negative)}")
        return costs

    @property
    def prices(self) -> ModelPrices:
        """The prices as the model catalog takes them (``models.catalog``)."""
        return ModelPrices(
            per_model=self.model_costs, per_billion_parameters=self.cost_per_billion_parameters
        )


class EngineSettings(BaseModel):
    """Which base models are served, and how their engines run, here or on Ray Serve."""

    model_config = _GROUP_CONFIG

    models: list[str] | None = Field(
        default=None,
        validation_alias="TAILOR_MODELS",
        description='Serve only these base models, JSON (["smollm2-135m-instruct"]); '
        "unset: every registered one.",
    )
    generation_defaults: dict[str, GenerationOverride] = Field(
        default_factory=dict,
        validation_alias="TAILOR_GENERATION_DEFAULTS",
        description="Per-model sampling defaults for requests that leave them out, JSON: "
        '{"smollm2-135m-instruct": {"temperature": 0.2, "top_p": 0.9, "max_tokens": 256, '
        '"stop": ["###"]}}; what a model leaves out comes from its generation_config.json, '
        "then from Tailor's built-in defaults.",
    )
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        validation_alias="TAILOR_DEVICE",
        description="Where models run: auto (CUDA when present), cpu, cuda, cuda:N.",
    )
    max_batch: int = Field(
        default=32,
        ge=1,
        validation_alias="TAILOR_MAX_BATCH",
        description="Rows decoded together per model.",
    )
    max_queue: int = Field(
        default=256,
        ge=1,
        validation_alias="TAILOR_MAX_QUEUE",
        description="Requests waiting per model.",
    )
    max_context_tokens: int = Field(
        default=4096,
        ge=64,
        validation_alias="TAILOR_MAX_CONTEXT_TOKENS",
        description="Cap on prompt plus output tokens per request.",
    )
    request_timeout_seconds: float = Field(
        default=300.0, gt=0, validation_alias="TAILOR_REQUEST_TIMEOUT_SECONDS"
    )
    # The slot pool is preallocated at max_adapter_rank for every wrapped
    # module: 16 slots of rank 16 cost about 0.3 GB for SmolLM2-135M in
    # float32, and compute scales with the pool's rank, not the adapter's.
    adapter_slots: int = Field(
        default=16,
        ge=2,
        validation_alias="TAILOR_ADAPTER_SLOTS",
        description="Adapter slots per model replica (slot 0 stays empty).",
    )
    max_adapter_rank: int = Field(
        default=16,
        ge=1,
        le=512,
        validation_alias="TAILOR_MAX_ADAPTER_RANK",
        description="Largest LoRA rank accepted and served.",
    )
    ray_max_replicas: int = Field(
        default=4,
        ge=1,
        validation_alias="TAILOR_RAY_MAX_REPLICAS",
        description="Autoscaling ceiling of each model's Ray Serve deployment.",
    )
    ray_num_cpus_per_replica: float = Field(
        default=1.0, ge=0.0, validation_alias="TAILOR_RAY_NUM_CPUS_PER_REPLICA"
    )
    ray_model_deployments: dict[str, RayModelDeployment] = Field(
        default_factory=dict,
        validation_alias="TAILOR_RAY_MODEL_DEPLOYMENTS",
        description="Per-model overrides of the Ray Serve deployment, JSON: "
        '{"gemma-3-270m": {"num_gpus": 0.5, "min_replicas": 1, "max_replicas": 8}}; '
        "what a model leaves out comes from the settings above (the Helm chart sets all four).",
    )


class Settings(BaseSettings):
    """Every setting of the service, by concern; docs/api.md section 8 lists the variables."""

    # Only the two sources of settings_customise_sources: no .env file, no secrets dir.
    model_config = SettingsConfigDict(extra="forbid", frozen=True, case_sensitive=False)

    server: ServerSettings = Field(default_factory=ServerSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    router: RouterSettings = Field(default_factory=RouterSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    finetune: FinetuneSettings = Field(default_factory=FinetuneSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Overrides (load_settings's keywords) win over the environment; pydantic-settings
        # merges the two group by group, so an override of one field keeps the others.
        return init_settings, _VariablePerField(settings_cls)


class SettingField(NamedTuple):
    """One setting: its environment variable, and where it sits (``settings.<group>.<name>``)."""

    variable: str
    group: str
    name: str
    field: FieldInfo


def setting_fields() -> list[SettingField]:
    """Every setting, group by group in declaration order."""
    found = []
    for group, group_field in Settings.model_fields.items():
        model = group_field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel), group
        for name, field in model.model_fields.items():
            variable = field.validation_alias
            if not isinstance(variable, str) or not variable.startswith(ENV_PREFIX):
                raise TypeError(f"settings.{group}.{name} names no {ENV_PREFIX}* variable")
            found.append(SettingField(variable, group, name, field))
    return found


class _VariablePerField(EnvSettingsSource):
    """The environment, read one flat variable per field into ``{group: {field: value}}``.

    pydantic-settings' own source would look for one variable per group (JSON, or
    ``TAILOR_SERVER__PORT`` with a nested delimiter); this one looks up each field's
    ``validation_alias`` instead, and decodes it as pydantic-settings does (JSON for
    lists and objects) through ``prepare_field_value``.
    """

    def __call__(self) -> dict[str, Any]:
        values: dict[str, dict[str, Any]] = {}
        for setting in setting_fields():
            key = setting.variable if self.case_sensitive else setting.variable.lower()
            raw = self.env_vars.get(key)
            if raw is None:
                continue
            try:
                value = self.prepare_field_value(setting.name, setting.field, raw, False)
            except ValueError:
                # Raised when a complex value (JSON) cannot even be parsed.
                raise ConfigurationError(setting.variable, "not valid JSON") from None
            values.setdefault(setting.group, {})[setting.name] = value
        return values


def load_settings(**overrides: Mapping[str, object]) -> Settings:
    """Read the settings from the environment, with ``overrides`` on top.

    An override is given per group and field name, and replaces only the fields it
    names: ``load_settings(server={"port": 9000}, storage={"data_dir": path})``. A
    malformed value raises ``ConfigurationError`` naming the variable.
    """
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        setting, inner = _variable_of(first["loc"])
        # Where inside a JSON value it went wrong (a model id, a field of it).
        problem = f"{inner}: {first['msg']}" if inner else first["msg"]
        raise ConfigurationError(setting, problem) from None
    server = settings.server
    if server.admin_key is None and server.admin_key_file is not None:
        key = _read_admin_key(server.admin_key_file)
        settings = settings.model_copy(
            update={"server": server.model_copy(update={"admin_key": key})}
        )
    return settings


def _variable_of(loc: tuple[int | str, ...]) -> tuple[str, str]:
    """The variable an error's location names, and the rest of the location."""
    variables = {(s.group, s.name): s.variable for s in setting_fields()}
    if len(loc) >= 2 and (loc[0], loc[1]) in variables:
        return variables[(str(loc[0]), str(loc[1]))], ".".join(str(part) for part in loc[2:])
    # Not a known field (a misspelt override): the path as given.
    return ".".join(str(part) for part in loc) or "settings", ""


def _read_admin_key(path: Path) -> SecretStr:
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError("TAILOR_ADMIN_KEY_FILE", f"cannot read {path}: {exc}") from None
    if not key:
        raise ConfigurationError("TAILOR_ADMIN_KEY_FILE", f"{path} is empty")
    return SecretStr(key)
