"""Request bodies of the OpenAI-compatible endpoints.

Unknown fields are ignored, as OpenAI clients send options Tailor does not
use; options that would change the meaning of a request and that Tailor does
not support (``n`` > 1) are refused by the route with 400.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[ContentPart]

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class SamplingFields(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    n: int = Field(default=1, ge=1)
    # Tailor's own: apply the caller's experts (default) or the bare base model;
    # for `auto`, a price ceiling per 1M tokens (strict: refuse rather than fall
    # back to the cheapest model), the cost weight lambda, a latency objective.
    # Unset: the user's preferences, then the service's defaults.
    personalize: bool = True
    max_price: float | None = Field(default=None, ge=0.0)
    strict_budget: bool = False
    cost_weight: float | None = Field(
        default=None, ge=0.0, validation_alias=AliasChoices("cost_weight", "lambda")
    )
    latency_slo_seconds: float | None = Field(default=None, gt=0.0)

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class ChatCompletionCreate(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionCreate(SamplingFields):
    prompt: str | list[str]

    @property
    def prompt_text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise ValueError("give one prompt per request")
        return self.prompt[0]
