"""Bodies of the user endpoints beyond completions: feedback, examples, fine-tunes.

Request schemas derive from ``RequestBody`` (no NUL, no lone surrogate);
strings that are stored are bounded by their columns in ``storage.tables``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.request_text import RequestBody
from storage.tables import AdapterKind, JobState

MAX_EXAMPLES_PER_REQUEST = 10_000


# Column lengths of storage.tables: responses.id, users.id, base_models.id.
RESPONSE_ID_CHARACTERS = 64
USER_ID_CHARACTERS = 32
MODEL_ID_CHARACTERS = 100


class FeedbackCreate(RequestBody):
    model_config = ConfigDict(extra="forbid")

    response_id: str = Field(min_length=1, max_length=RESPONSE_ID_CHARACTERS)
    # Strict: `true` or "1" is not a rating.
    rating: Annotated[int, Field(strict=True, ge=-1, le=1)] | None = None
    preferred_over: str | None = Field(
        default=None, min_length=1, max_length=RESPONSE_ID_CHARACTERS
    )

    @model_validator(mode="after")
    def _one_kind(self) -> FeedbackCreate:
        if (self.rating is None) == (self.preferred_over is None):
            raise ValueError("give either rating or preferred_over")
        if self.preferred_over == self.response_id:
            raise ValueError("a response cannot be preferred over itself")
        return self


class FeedbackPublic(BaseModel):
    id: int
    object: Literal["feedback"] = "feedback"
    response_id: str
    rating: int | None
    preferred_over: str | None
    duplicate: bool
    created_at: datetime


class ExampleMessage(RequestBody):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)


class Example(RequestBody):
    model_config = ConfigDict(extra="forbid")

    messages: list[ExampleMessage] = Field(min_length=1)

    @model_validator(mode="after")
    def _has_an_answer(self) -> Example:
        # Training learns the assistant's turns; an example without one
        # teaches nothing.
        if not any(m.role == "assistant" for m in self.messages):
            raise ValueError("an example needs at least one assistant message")
        return self


class ExamplesCreated(BaseModel):
    object: Literal["examples.created"] = "examples.created"
    stored: int
    total: int


class ExampleMessagePublic(BaseModel):
    """A stored message of an example: as it was sent (``ExampleMessage``)."""

    role: Literal["system", "user", "assistant"]
    content: str


class ExamplePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    messages: list[ExampleMessagePublic]
    source: str
    created_at: datetime


class ExamplesPage(BaseModel):
    object: Literal["list"] = "list"
    total: int
    data: list[ExamplePublic]
    has_more: bool


class Hyperparameters(RequestBody):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # Left out, each is sized to the user's data (finetune.training_plan).
    steps: int | None = Field(default=None, ge=1, le=10_000)
    epochs: int | None = Field(default=None, ge=1, le=25)
    batch_size: int | None = Field(default=None, ge=1, le=64)
    learning_rate: float | None = Field(default=None, gt=0.0, le=0.01)
    rank: int | None = Field(default=None, ge=1, le=256)

    @model_validator(mode="after")
    def _one_length(self) -> Hyperparameters:
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give steps or epochs, not both")
        return self


class FineTuneCreate(RequestBody):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(default="auto", min_length=1, max_length=MODEL_ID_CHARACTERS)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class FineTunePublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    status: JobState
    model: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    adapter_id: str | None
    result_version_id: str | None
    hyperparameters: dict[str, Any]
    attempt: int
    error: str | None
    # Once it succeeded: "promoted" (the user is served the new version) or "held_back".
    outcome: Literal["promoted", "held_back"] | None = None
    outcome_reason: str | None = None
    # A job of /v1/fine_tuning/jobs trains on an uploaded file (null: the user's data).
    training_file: str | None = None
    validation_file: str | None = None


class AdminJobPublic(FineTunePublic):
    """A job as admins see it: whose, which adapter, what queued it."""

    user_id: str | None
    kind: AdapterKind
    target: str
    trigger: str
    max_attempts: int
    cancel_requested: bool


class AdminJobCreate(RequestBody):
    """``POST /admin/jobs``: a specialist for ``user_id``, or else the model's generalist."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=MODEL_ID_CHARACTERS)
    user_id: str | None = Field(default=None, min_length=1, max_length=USER_ID_CHARACTERS)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class JobEventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    attempt: int
    kind: str
    payload: dict[str, Any]
    created_at: datetime
