"""The fine-tune group of Tailor's settings: what operators set for the worker and its triggers.

Declared here, not beside the one settings class (``serving/settings.py``), because
this layer reads it and may not import ``serving``: serving's ``Settings`` nests it as
``settings.finetune`` and hands it down (``worker_from_settings``,
``TriggerPolicy.from_settings``). Nothing in this package reads the whole ``Settings``.

Invariants: every field names its environment variable as its ``validation_alias``
(``TAILOR_FINETUNE_*``, the names operators and the Helm chart set); the model is
frozen and refuses unknown fields; reading the environment is ``load_settings``'s
business, never this module's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class FinetuneSettings(BaseModel):
    """The fine-tune worker (``finetune.worker``) and its automatic triggers
    (``finetune.triggers``)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_by_name=True, validate_default=True
    )

    # When fine-tune jobs are queued without anyone asking (finetune.triggers).
    trigger_new_examples: int = Field(
        default=50,
        ge=0,
        validation_alias="TAILOR_FINETUNE_TRIGGER_NEW_EXAMPLES",
        description="Queue a user's specialist job once they have this many new training "
        "conversations (uploaded examples and liked chat answers) since it was last trained; "
        "0: off.",
    )
    retrain_interval_hours: float = Field(
        default=0.0,
        ge=0.0,
        validation_alias="TAILOR_FINETUNE_RETRAIN_INTERVAL_HOURS",
        description="Retrain a specialist last trained longer ago than this when its user "
        "has any new conversation; 0: off.",
    )
    generalist_interval_hours: float = Field(
        default=0.0,
        ge=0.0,
        validation_alias="TAILOR_FINETUNE_GENERALIST_INTERVAL_HOURS",
        description="Retrain each base model's generalist this often when any user "
        "has a new conversation; 0: off.",
    )

    # The fine-tune worker (finetune.worker).
    workers: int = Field(
        default=1,
        ge=0,
        le=16,
        validation_alias="TAILOR_FINETUNE_WORKERS",
        description="Worker processes `tailor serve` starts beside the API (embedded mode); "
        "0: none (run `tailor worker` elsewhere).",
    )
    gpus_per_worker: float = Field(
        default=0.0,
        ge=0.0,
        validation_alias="TAILOR_FINETUNE_GPUS_PER_WORKER",
        description="GPUs each fine-tune worker actor holds with --ray (Ray's num_gpus).",
    )
    device: str = Field(
        default="auto",
        validation_alias="TAILOR_FINETUNE_DEVICE",
        description="Where workers train: auto (a GPU if any), cpu, cuda, cuda:N.",
    )
    quantization: Literal["nf4", "none"] = Field(
        default="nf4",
        validation_alias="TAILOR_FINETUNE_QUANTIZATION",
        description="nf4: QLoRA on a 4-bit base; none: a full-precision base.",
    )
    batch_size: int = Field(default=8, ge=1, le=512, validation_alias="TAILOR_FINETUNE_BATCH_SIZE")
    lease_seconds: float = Field(
        default=60.0,
        gt=0,
        validation_alias="TAILOR_FINETUNE_LEASE_SECONDS",
        description="A job whose worker is silent this long is re-leased.",
    )
    heartbeat_seconds: float = Field(
        default=2.0,
        gt=0,
        validation_alias="TAILOR_FINETUNE_HEARTBEAT_SECONDS",
        description="Lease renewal, and how soon a cancel is noticed.",
    )
    retry_base_seconds: float = Field(
        default=10.0,
        ge=0,
        validation_alias="TAILOR_FINETUNE_RETRY_BASE_SECONDS",
        description="Backoff before a failed job's retry, doubling each time.",
    )
    auto_promote: bool = Field(
        default=True,
        validation_alias="TAILOR_FINETUNE_AUTO_PROMOTE",
        description="Promote a candidate that passes the evaluation gate.",
    )
    generic_texts: int = Field(
        default=40,
        ge=1,
        le=40,
        validation_alias="TAILOR_FINETUNE_GENERIC_TEXTS",
        description="How many of the fixed generic passages the evaluation gate scores "
        "to catch forgetting (fewer: faster, noisier).",
    )
    factual_probes: int = Field(
        default=30,
        ge=0,
        le=30,
        validation_alias="TAILOR_FINETUNE_FACTUAL_PROBES",
        description="How many of the fixed factual questions the evaluation gate asks base "
        "and candidate (0: the check is off). A candidate may lose at most "
        "TAILOR_FINETUNE_MAX_PROBE_LOSS of those the base model answers.",
    )
    max_probe_loss: float = Field(
        default=0.05,
        ge=0.0,
        le=0.5,  # storage.repositories.users.MAX_PROBE_LOSS, a user's own limit's bound
        validation_alias="TAILOR_FINETUNE_MAX_PROBE_LOSS",
        description="The share of the factual probes the base model answers that a "
        "candidate may lose (0.05: 1 of 30). A strong style on a small model costs a few "
        "facts; an admin may set a user's own (PATCH /admin/users/{id}/fine-tuning).",
    )
    max_generic_rise: float = Field(
        default=0.10,
        ge=0.0,
        le=10.0,  # storage.repositories.users.MAX_GENERIC_RISE, a user's own limit's bound
        validation_alias="TAILOR_FINETUNE_MAX_GENERIC_RISE",
        description="The evaluation gate's limit on how much a candidate may raise the "
        "NLL of the generic passages over the base model's (0.10: 10%). A real style "
        "raises it by several percent; the factual probes guard knowledge. An admin may set "
        "a user's own (PATCH /admin/users/{id}/fine-tuning).",
    )
    trigger_check_seconds: float = Field(
        default=30.0,
        gt=0,
        validation_alias="TAILOR_FINETUNE_TRIGGER_CHECK_SECONDS",
        description="How often a worker looks for jobs to queue by itself.",
    )
    heartbeat_file: Path | None = Field(
        default=None,
        validation_alias="TAILOR_FINETUNE_HEARTBEAT_FILE",
        description="A file the worker touches at every poll and lease renewal, so that "
        "`tailor worker --check-health` (a Kubernetes probe) can tell a live worker from a "
        "hung one; unset: none.",
    )
