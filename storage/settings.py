"""Tailor's one settings object, read from ``TAILOR_*`` environment variables.

Built once at start-up by ``load_settings()`` (never at import) and passed
down explicitly; nothing else in Tailor reads the environment for its own
configuration.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from storage.errors import ConfigurationError

ENV_PREFIX = "TAILOR_"


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


class Settings(BaseSettings):
    """Every setting of the service; see the table in the README."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    data_dir: Path = Field(
        default=Path("var"),
        description="Model store, adapter blobs and the default SQLite file.",
    )
    model_store: Path | None = Field(
        default=None,
        description="Directory of prepared base models; unset means <data dir>/models.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; unset means a SQLite file in the data dir.",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis URL; unset means an in-process cache.",
    )
    admin_key: SecretStr | None = Field(
        default=None,
        description="Bootstrap admin key (a Bearer token with admin scope); "
        "unset closes the admin API.",
    )
    admin_key_file: Path | None = Field(
        default=None,
        description="A file holding the bootstrap admin key (a mounted secret, or the "
        "var/admin-key that `make run` writes); read at start-up when TAILOR_ADMIN_KEY "
        "is unset.",
    )
    session_secret: SecretStr | None = Field(
        default=None,
        description="Signs the dashboard's session cookies; unset means one derived from "
        "the admin key (or, with no admin key, a random one per process). Set it when "
        "several processes serve the dashboard behind one address.",
    )
    admin_session_minutes: float = Field(
        default=480.0, gt=0, le=7 * 24 * 60, description="How long a dashboard sign-in lasts."
    )
    dashboard_sample_seconds: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="How often the dashboard's overview charts take a point (one hour is kept).",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    forwarded_allow_ips: str | None = Field(
        default=None,
        description="Proxies whose X-Forwarded-For and X-Forwarded-Proto are believed: "
        "comma-separated IPs or CIDRs, or *; unset: none, the connecting address is the client.",
    )
    cache_prefix: str = Field(
        default="tailor:",
        description="Prefix of every cache key and channel, "
        "so that one Redis can hold several installs.",
    )
    migrate_on_start: bool = Field(
        default=True,
        description="Bring the database schema to the newest revision when the service starts.",
    )
    cost_per_billion_parameters: float = Field(
        default=1.0,
        gt=0,
        description="Relative price per 1M tokens of a base model with 1B parameters; "
        "a model's default price is proportional to its parameter count.",
    )
    model_costs: dict[str, float] = Field(
        default_factory=dict,
        description='Per-model price overrides per 1M tokens, JSON: {"gemma-3-270m": 0.5}.',
    )

    default_model: str | None = Field(
        default=None,
        description="Base model that answers `auto` until the router has feedback to learn "
        "from; unset: the cheapest that can serve the request.",
    )
    # The router (Eagle: arXiv 2409.15518; the paper's P, N and K by default).
    router_global_weight: float = Field(
        default=0.5, ge=0.0, le=1.0, description="P: weight of the global ELO against the local."
    )
    router_neighbours: int = Field(
        default=20, ge=1, description="N: past queries the local ELO is replayed from."
    )
    router_k: float = Field(default=32.0, gt=0, description="K: the ELO step.")
    router_user_full_votes: int = Field(
        default=1,
        ge=1,
        description="A user alone on the service, or voting in a burst, counts as this many "
        "votes in the routing every user gets. Their own routing learns from every vote.",
    )
    router_user_max_share: float = Field(
        default=0.05,
        ge=0.0,
        lt=1.0,
        description="While others vote, a user earns back this share of their weight as "
        "credit for their own votes in the shared routing estimate, up to "
        "router_user_full_votes (0: a user counts as router_user_full_votes votes in all).",
    )
    router_cost_weight: float = Field(
        default=0.1,
        ge=0.0,
        description="Lambda: quality given up per unit of cost (relative to the dearest "
        "candidate); users and requests may set their own.",
    )
    router_latency_slo_seconds: float | None = Field(
        default=30.0,
        gt=0,
        description="Latency objective the router avoids missing by moving load; unset: none.",
    )
    router_switch_confidence: float = Field(
        default=0.95,
        ge=0.5,
        lt=1.0,
        description="`auto` leaves the incumbent (the base holding the user's specialist, "
        "else the default model, else the cheapest) only for a model better with at least "
        "this posterior probability.",
    )
    router_explore_rate: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description="Share of a user's `auto` requests that may explore (Thompson "
        "sampling); 0 turns exploration off.",
    )
    router_explore_max_regret: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description="Most expected utility (P(good) units) one explored request may give up.",
    )
    router_expert_bonus: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="Utility of a user's own specialist on a base model when its gain "
        "passed the evaluation gate (less for a smaller, unproven gain).",
    )
    router_snapshot_every: int = Field(
        default=10_000,
        ge=0,
        description="Write the router's learnt state to <data dir>/router/state.npz after "
        "this many new pieces of feedback (and at shutdown), so a restart replays only "
        "what came after; 0: never.",
    )
    router_sync_seconds: float = Field(
        default=2.0,
        gt=0,
        description="How often a process picks up feedback stored by other processes.",
    )
    models: list[str] | None = Field(
        default=None,
        description='Serve only these base models, JSON (["smollm2-135m-instruct"]); '
        "unset: every registered one.",
    )
    generation_defaults: dict[str, GenerationOverride] = Field(
        default_factory=dict,
        description="Per-model sampling defaults for requests that leave them out, JSON: "
        '{"smollm2-135m-instruct": {"temperature": 0.2, "top_p": 0.9, "max_tokens": 256, '
        '"stop": ["###"]}}; what a model leaves out comes from its generation_config.json, '
        "then from Tailor's built-in defaults.",
    )
    ray_max_replicas: int = Field(
        default=4, ge=1, description="Autoscaling ceiling of each model's Ray Serve deployment."
    )
    ray_num_cpus_per_replica: float = Field(default=1.0, ge=0.0)
    ray_model_deployments: dict[str, RayModelDeployment] = Field(
        default_factory=dict,
        description="Per-model overrides of the Ray Serve deployment, JSON: "
        '{"gemma-3-270m": {"num_gpus": 0.5, "min_replicas": 1, "max_replicas": 8}}; '
        "what a model leaves out comes from the settings above (the Helm chart sets all four).",
    )
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="Where models run: auto (CUDA when present), cpu, cuda, cuda:N.",
    )
    max_batch: int = Field(default=32, ge=1, description="Rows decoded together per model.")
    max_queue: int = Field(default=256, ge=1, description="Requests waiting per model.")
    max_context_tokens: int = Field(
        default=4096, ge=64, description="Cap on prompt plus output tokens per request."
    )
    max_request_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted (413 beyond, before it is parsed); "
        "POST /v1/examples and adapter uploads keep their own larger limits.",
    )
    request_timeout_seconds: float = Field(default=300.0, gt=0)
    # The slot pool is preallocated at max_adapter_rank for every wrapped
    # module: 16 slots of rank 16 cost about 0.3 GB for SmolLM2-135M in
    # float32, and compute scales with the pool's rank, not the adapter's.
    adapter_slots: int = Field(
        default=16, ge=2, description="Adapter slots per model replica (slot 0 stays empty)."
    )
    max_adapter_rank: int = Field(
        default=16, ge=1, le=512, description="Largest LoRA rank accepted and served."
    )
    rate_limit_requests_per_minute: float = Field(
        default=600.0, gt=0, description="Per user, refilled continuously."
    )
    rate_limit_burst: float = Field(default=60.0, ge=1, description="Per user, at once.")
    # When fine-tune jobs are queued without anyone asking (finetune.triggers).
    finetune_trigger_new_examples: int = Field(
        default=50,
        ge=0,
        description="Queue a user's specialist job once they have this many new training "
        "conversations (uploaded examples and liked chat answers) since it was last trained; "
        "0: off.",
    )
    finetune_retrain_interval_hours: float = Field(
        default=0.0,
        ge=0.0,
        description="Retrain a specialist last trained longer ago than this when its user "
        "has any new conversation; 0: off.",
    )
    finetune_generalist_interval_hours: float = Field(
        default=0.0,
        ge=0.0,
        description="Retrain each base model's generalist this often when any user "
        "has a new conversation; 0: off.",
    )

    # The fine-tune worker (finetune.worker).
    finetune_workers: int = Field(
        default=1,
        ge=0,
        le=16,
        description="Worker processes `tailor serve` starts beside the API (embedded mode); "
        "0: none (run `tailor worker` elsewhere).",
    )
    finetune_gpus_per_worker: float = Field(
        default=0.0,
        ge=0.0,
        description="GPUs each fine-tune worker actor holds with --ray (Ray's num_gpus).",
    )
    finetune_device: str = Field(
        default="auto", description="Where workers train: auto (a GPU if any), cpu, cuda, cuda:N."
    )
    finetune_quantization: Literal["nf4", "none"] = Field(
        default="nf4", description="nf4: QLoRA on a 4-bit base; none: a full-precision base."
    )
    finetune_batch_size: int = Field(default=8, ge=1, le=512)
    finetune_lease_seconds: float = Field(
        default=60.0, gt=0, description="A job whose worker is silent this long is re-leased."
    )
    finetune_heartbeat_seconds: float = Field(
        default=2.0, gt=0, description="Lease renewal, and how soon a cancel is noticed."
    )
    finetune_retry_base_seconds: float = Field(
        default=10.0, ge=0, description="Backoff before a failed job's retry, doubling each time."
    )
    finetune_auto_promote: bool = Field(
        default=True, description="Promote a candidate that passes the evaluation gate."
    )
    finetune_generic_texts: int = Field(
        default=40,
        ge=1,
        le=40,
        description="How many of the fixed generic passages the evaluation gate scores "
        "to catch forgetting (fewer: faster, noisier).",
    )
    finetune_factual_probes: int = Field(
        default=30,
        ge=0,
        le=30,
        description="How many of the fixed factual questions the evaluation gate asks base "
        "and candidate (0: the check is off). A candidate may lose at most "
        "TAILOR_FINETUNE_MAX_PROBE_LOSS of those the base model answers.",
    )
    finetune_max_probe_loss: float = Field(
        default=0.05,
        ge=0.0,
        le=0.5,  # storage.repositories.users.MAX_PROBE_LOSS, a user's own limit's bound
        description="The share of the factual probes the base model answers that a "
        "candidate may lose (0.05: 1 of 30). A strong style on a small model costs a few "
        "facts; an admin may set a user's own (PATCH /admin/users/{id}/fine-tuning).",
    )
    finetune_max_generic_rise: float = Field(
        default=0.10,
        ge=0.0,
        le=10.0,  # storage.repositories.users.MAX_GENERIC_RISE, a user's own limit's bound
        description="The evaluation gate's limit on how much a candidate may raise the "
        "NLL of the generic passages over the base model's (0.10: 10%). A real style "
        "raises it by several percent; the factual probes guard knowledge. An admin may set "
        "a user's own (PATCH /admin/users/{id}/fine-tuning).",
    )
    finetune_trigger_check_seconds: float = Field(
        default=30.0, gt=0, description="How often a worker looks for jobs to queue by itself."
    )
    finetune_heartbeat_file: Path | None = Field(
        default=None,
        description="A file the worker touches at every poll and lease renewal, so that "
        "`tailor worker --check-health` (a Kubernetes probe) can tell a live worker from a "
        "hung one; unset: none.",
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

    @field_validator("model_costs")
    @classmethod
    def _costs_are_not_negative(cls, costs: dict[str, float]) -> dict[str, float]:
        negative = sorted(name for name, cost in costs.items() if cost < 0)
        if negative:
            raise ValueError(f"negative price for {', '.join(negative)}")
        return costs

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


def load_settings(**overrides: object) -> Settings:
    """Read the settings from the environment, with ``overrides`` on top.

    A malformed value raises ``ConfigurationError`` naming the variable, so
    that the command line can print one line instead of a traceback.
    """
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "settings"
        # Where inside a JSON value it went wrong (a model id, a field of it).
        inner = ".".join(str(part) for part in first["loc"][1:])
        problem = f"{inner}: {first['msg']}" if inner else first["msg"]
        raise ConfigurationError(f"{ENV_PREFIX}{field.upper()}", problem) from None
    except SettingsError as exc:
        # Raised when a complex value (JSON) cannot even be parsed.
        match = re.search(r'field "(\w+)"', str(exc))
        field = match.group(1) if match else "settings"
        raise ConfigurationError(f"{ENV_PREFIX}{field.upper()}", "not valid JSON") from None
    if settings.admin_key is None and settings.admin_key_file is not None:
        settings = settings.model_copy(
            update={"admin_key": _read_admin_key(settings.admin_key_file)}
        )
    return settings


def _read_admin_key(path: Path) -> SecretStr:
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(
            f"{ENV_PREFIX}ADMIN_KEY_FILE", f"cannot read {path}: {exc}"
        ) from None
    if not key:
        raise ConfigurationError(f"{ENV_PREFIX}ADMIN_KEY_FILE", f"{path} is empty")
    return SecretStr(key)
