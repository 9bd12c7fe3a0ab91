"""Request and response bodies of the OpenAI-compatible endpoints.

A completion body keeps its undeclared fields (``model_extra``): which of
them change nothing and which are refused with 400 naming them is decided in
``serving.completions.parameters``; ``n`` > 1 is refused by the route too.

Every schema derives from ``RequestBody`` (no NUL, no lone surrogate), and
numbers and strings are bounded so that nothing reaching the tokenizer, the
engine or the stored request log is unbounded: the prompt's characters
(``MAX_PROMPT_CHARACTERS``, checked before anything is tokenised), the stop
sequences, the seed (a signed 64-bit integer) and the token counts; floats
must be finite, as the request log (JSONB on PostgreSQL) cannot hold
``Infinity`` or ``NaN``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    MISSING,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from serving.request_text import RequestBody
from serving.routing_schemas import (
    MAX_COST_WEIGHT,
    MAX_LATENCY_SLO_SECONDS,
    MAX_PRICE_PER_MILLION,
    RoutePublic,
)
from storage.tables import AdapterKind

# Characters of all messages (or prompts) of one request. The models served
# take at most 32K tokens of context, and a token is usually 3-4 characters:
# a longer prompt would not fit anyway, and refusing it costs no tokenisation.
MAX_PROMPT_CHARACTERS = 200_000
MAX_MESSAGES = 10_000
MAX_STOP_CHARACTERS = 1_000
MAX_TOKENS_LIMIT = 2**31 - 1
SEED_MIN = -(2**63)
SEED_MAX = 2**63 - 1
# Base model ids are String(100) in storage; a fine-tuned model's id adds a suffix of
# at most 64 characters and a version id (ft:<base>:<suffix>:<adv_...>); `auto` is shorter.
MAX_MODEL_ID_CHARACTERS = 200


class ContentPart(RequestBody):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class ChatMessage(RequestBody):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[ContentPart]

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class JsonSchemaFormat(RequestBody):
    """OpenAI's ``response_format.json_schema``: the schema the output must match."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = Field(default=None, max_length=MAX_STOP_CHARACTERS * 16)
    # Named json_schema's "schema" on the wire; a BaseModel attribute of that name
    # would shadow pydantic's own.
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    # The schema is always followed exactly; strict asks for nothing more.
    strict: bool | None = None


class ResponseFormat(RequestBody):
    """OpenAI's ``response_format``: free text, any JSON object, or JSON matching a schema."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is given exactly when type is json_schema")
        return self


class SamplingFields(RequestBody):
    # Undeclared fields are kept for serving.completions.parameters to judge.
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str = Field(min_length=1, max_length=MAX_MODEL_ID_CHARACTERS)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    # None (left out, or null): the model's default (serving/generation_defaults.py),
    # as are max_tokens and stop.
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: (
        Annotated[str, Field(max_length=MAX_STOP_CHARACTERS)]
        | list[Annotated[str, Field(max_length=MAX_STOP_CHARACTERS)]]
        | None
    ) = None
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    stream: bool = False
    n: int = Field(default=1, ge=1)
    # Tailor's own: apply the caller's experts (default) or the bare base model;
    # for `auto`, a price ceiling per 1M tokens (strict: refuse rather than fall
    # back to the cheapest model), the cost weight lambda, a latency objective.
    # Unset: the user's preferences, then the service's defaults.
    personalize: bool = True
    max_price: float | None = Field(default=None, ge=0.0, le=MAX_PRICE_PER_MILLION)
    strict_budget: bool = False
    cost_weight: float | None = Field(
        default=None,
        ge=0.0,
        le=MAX_COST_WEIGHT,
        validation_alias=AliasChoices("cost_weight", "lambda"),
    )
    latency_slo_seconds: float | None = Field(default=None, gt=0.0, le=MAX_LATENCY_SLO_SECONDS)
    # JSON output by constrained decoding (serving.engine.constraints); None or text: free text.
    response_format: ResponseFormat | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    @property
    def stop_sequences(self) -> tuple[str, ...] | None:
        """The stop sequences asked for; None when the request leaves them to the model."""
        if self.stop is None:
            return None
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class ChatCompletionCreate(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    # Each generated token's log-probability; with top_logprobs, that many alternatives.
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    @property
    def logprobs_asked(self) -> int | None:
        """How many alternatives come with each token's log-probability; None: none asked."""
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return (self.top_logprobs or 0) if self.logprobs else None

    @field_validator("messages")
    @classmethod
    def _not_too_long(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        _check_characters(sum(len(m.text) for m in messages))
        return messages

    @property
    def transcript(self) -> str:
        return "\n".join(m.text for m in self.messages)

    @property
    def routing_text(self) -> str:
        """What the router reads: this turn's question, the latest user message. The router
        reads only a text's first few tokens (router/query_embedder.py), which a system
        prompt or the first turn would otherwise fill for every turn of a conversation."""
        asked = [m.text for m in self.messages if m.role == "user"]
        return asked[-1] if asked else self.transcript


class CompletionCreate(SamplingFields):
    prompt: str | list[str]
    # The legacy form: this many alternatives with each token's log-probability.
    logprobs: int | None = Field(default=None, ge=0, le=5)

    @property
    def logprobs_asked(self) -> int | None:
        return self.logprobs

    @field_validator("prompt")
    @classmethod
    def _not_too_long(cls, prompt: str | list[str]) -> str | list[str]:
        prompts = [prompt] if isinstance(prompt, str) else prompt
        _check_characters(sum(len(p) for p in prompts))
        return prompt

    @property
    def prompt_text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise ValueError("give one prompt per request")
        return self.prompt[0]


def _check_characters(count: int) -> None:
    if count > MAX_PROMPT_CHARACTERS:
        raise ValueError(f"{count} characters in all; at most {MAX_PROMPT_CHARACTERS} are accepted")


# Responses -------------------------------------------------------------------------
#
# The bodies of serving.completions.wire (built there as dicts, validated against these by
# the route's response_model). ``extra="forbid"``: a field added there and not here
# fails the tests rather than vanishing from the answer. A stream's chunks are
# documented in the route's ``responses`` (text/event-stream), not modelled.

FinishReason = Literal["stop", "length"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UsagePublic(_Strict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ExpertUsedPublic(_Strict):
    """An expert applied to the answer (``tailor.adapters[]``)."""

    id: str
    kind: AdapterKind
    version: int
    version_id: str


class TailorExtraPublic(_Strict):
    """Tailor's own part of a completion: how it was routed, which experts answered."""

    route: RoutePublic
    adapters: list[ExpertUsedPublic]
    # "timeout" or "cancelled", only when the generation was cut short.
    ended_by: str | MISSING = MISSING


class AssistantMessagePublic(_Strict):
    role: Literal["assistant"]
    content: str


class TopLogprobPublic(_Strict):
    token: str
    # Natural log; -9999.0 stands for a probability that underflows to zero.
    logprob: float
    bytes: list[int]  # the token's text as UTF-8


class TokenLogprobPublic(TopLogprobPublic):
    top_logprobs: list[TopLogprobPublic]


class ChatLogprobsPublic(_Strict):
    """A chat choice's ``logprobs`` (``"logprobs": true``)."""

    content: list[TokenLogprobPublic]
    refusal: None


class TextLogprobsPublic(_Strict):
    """A text completion's ``logprobs`` (``"logprobs": N``), OpenAI's legacy form."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class ChatChoicePublic(_Strict):
    index: int
    message: AssistantMessagePublic
    finish_reason: FinishReason
    logprobs: ChatLogprobsPublic | None


class TextChoicePublic(_Strict):
    index: int
    text: str
    finish_reason: FinishReason
    logprobs: TextLogprobsPublic | None


class ChatCompletionPublic(_Strict):
    """``POST /v1/chat/completions`` without ``stream``."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoicePublic]
    usage: UsagePublic
    tailor: TailorExtraPublic


class TextCompletionPublic(_Strict):
    """``POST /v1/completions`` without ``stream``."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextChoicePublic]
    usage: UsagePublic
    tailor: TailorExtraPublic
