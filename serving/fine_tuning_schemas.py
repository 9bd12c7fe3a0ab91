"""Bodies of OpenAI's files and fine-tuning API (``/v1/files``, ``/v1/fine_tuning/jobs``).

The shapes are OpenAI's, so that its SDK reads them (``FileObject``,
``FineTuningJob``, ``FineTuningJobEvent``); Tailor adds fields only where it
has more to say (``examples`` of a file, ``tailor`` of a job). Timestamps are
Unix seconds here, as OpenAI sends them, where Tailor's own routes send ISO
strings.

Request schemas keep the fields they do not declare (``extra="allow"``): the
route refuses each with a 400 naming it, as OpenAI answers a parameter it does
not know, where a schema's own refusal would be a 422 naming nothing useful.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from serving.request_text import RequestBody
from serving.user_schemas import MODEL_ID_CHARACTERS
from storage.tables import JobState

# Column lengths of storage.tables: training_files.id, finetune_jobs.suffix.
FILE_ID_CHARACTERS = 40
SUFFIX_CHARACTERS = 64
# OpenAI's range of a job's seed.
SEED_MAX = 2**31 - 1

Auto = Literal["auto"]


class FilePublic(BaseModel):
    """OpenAI's ``file`` object, plus ``examples``: the conversations it holds."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: Literal["fine-tune"] = "fine-tune"
    # Validated when uploaded: a stored file is always processed.
    status: Literal["processed"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None
    examples: int


class FileDeletedPublic(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class FineTuningHyperparameters(RequestBody):
    """OpenAI's names, each ``"auto"`` (sized to the data) or a value."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    n_epochs: Auto | Annotated[int, Field(strict=True, ge=1, le=25)] = "auto"
    batch_size: Auto | Annotated[int, Field(strict=True, ge=1, le=64)] = "auto"
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0.0, le=10.0)] = "auto"


class SupervisedMethod(RequestBody):
    model_config = ConfigDict(extra="allow")

    hyperparameters: FineTuningHyperparameters | None = None


class FineTuningMethod(RequestBody):
    """OpenAI's newer place for the hyperparameters: ``{"type": "supervised", ...}``."""

    model_config = ConfigDict(extra="allow")

    type: str
    supervised: SupervisedMethod | None = None


class FineTuningJobCreate(RequestBody):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str = Field(min_length=1, max_length=MODEL_ID_CHARACTERS)
    training_file: str = Field(min_length=1, max_length=FILE_ID_CHARACTERS)
    validation_file: str | None = Field(default=None, min_length=1, max_length=FILE_ID_CHARACTERS)
    hyperparameters: FineTuningHyperparameters | None = None
    method: FineTuningMethod | None = None
    # It names the model: ft:<base>:<suffix>:<version>, so no ":" in it.
    suffix: str | None = Field(
        default=None, min_length=1, max_length=SUFFIX_CHARACTERS, pattern=r"^[A-Za-z0-9._-]+$"
    )
    seed: Annotated[int, Field(strict=True, ge=0, le=SEED_MAX)] | None = None


class FineTuningJobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class FineTuningHyperparametersPublic(BaseModel):
    n_epochs: Auto | int
    batch_size: Auto | int
    learning_rate_multiplier: Auto | float


class FineTuningJobTailor(BaseModel):
    """What Tailor adds to a job: what became of its version, as ``/v1/fine-tunes`` says."""

    adapter_id: str | None
    result_version_id: str | None
    outcome: Literal["promoted", "held_back"] | None
    outcome_reason: str | None
    attempt: int


class FineTuningJobPublic(BaseModel):
    """OpenAI's ``fine_tuning.job``."""

    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: FineTuningJobError | None
    # The model to call once the job's version is served (promoted), else null.
    fine_tuned_model: str | None
    finished_at: int | None
    hyperparameters: FineTuningHyperparametersPublic
    model: str
    # The user who owns the job (OpenAI names an organization here).
    organization_id: str
    result_files: list[str] = Field(default_factory=list)
    seed: int
    status: JobState
    trained_tokens: int | None
    # Null for a job of /v1/fine-tunes: it trains on the user's examples and liked answers.
    training_file: str | None
    validation_file: str | None
    estimated_finish: int | None = None
    suffix: str | None
    tailor: FineTuningJobTailor


class FineTuningEventPublic(BaseModel):
    """OpenAI's ``fine_tuning.job.event``; ``data`` holds Tailor's event payload."""

    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] | None
