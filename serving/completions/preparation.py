"""Admission and preparation: from an OpenAI-style request to the engine work it asks for.

Checks what Tailor serves (models loaded, one choice, a known model), routes the request
to a base model with the caller's routing preferences (a fine-tuned model's id,
``ft:...``, forces its base model and pins that specialist version), tokenizes it the way the
fine-tune worker trains (``models.chat_format``), fits it to the model's context,
fills the sampling the request leaves out from the model's defaults, and resolves the
caller's experts on the chosen model. Nothing here starts work or holds a resource:
a request refused here costs the engine and the router's load ledger nothing.

Invariant: every refusal is an ``ApiError`` with the status and code the API documents
(docs/api.md); a prepared completion names one served model, one routing decision and
the exact experts it will run with.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from adapters.expert_sets import ExpertSet
from adapters.fine_tuned_models import looks_fine_tuned
from models import chat_format
from router import BudgetNotMet, ExpertEvidence, NoRoute, RouteRequest, RoutingDecision
from serving.auth import Principal
from serving.completions.parameters import UnsupportedParameter, check_parameters
from serving.engine.constraints import ConstraintFailed, json_grammar
from serving.engine.requests import GenerationRequest
from serving.engine.sampling import SamplingParams
from serving.errors import ApiError
from serving.generation_defaults import BUILT_IN, GenerationDefaults
from serving.openai_schemas import ChatCompletionCreate, CompletionCreate, SamplingFields
from serving.runtime import ModelRuntime, ServedModel
from storage.ids import new_id

Endpoint = Literal["chat.completions", "completions"]
# What the router assumes of a request without max_tokens, before a model (and
# so its own default) is chosen.
ROUTING_MAX_TOKENS = BUILT_IN.max_tokens
# A transcript (a model without a chat template) has no end-of-turn token: the
# answer ends where the model goes on to write the next turn, as the fine-tune
# worker trains it to ("Assistant: <answer>\nUser: ..."). The roles are those
# chat_format.transcript writes ("developer" is sent as "system").
TRANSCRIPT_TURN_MARKERS = tuple(
    f"\n{role.capitalize()}:" for role in ("user", "assistant", "system")
)
# The transcript ends with "Assistant:"; the model opens its answer with the
# space, which its tokenizers fold into the first word ("▁The"), so the prompt
# cannot end with it: the engine drops it from the answer instead.
TRANSCRIPT_ANSWER_LEAD = " "


@dataclass(frozen=True)
class Prompt:
    """The tokens to continue, and how the answer ends apart from the caller's stops."""

    ids: list[int]
    turn_markers: tuple[str, ...] = ()
    answer_lead: str = ""


@dataclass(frozen=True)
class PreparedCompletion:
    endpoint: Endpoint
    response_id: str
    created: int
    user_id: str
    model: ServedModel
    decision: RoutingDecision
    experts: ExpertSet
    request: GenerationRequest
    logged_request: dict[str, Any]
    # The ``model`` the response names: the base model that answered, or the
    # fine-tuned model (ft:...) the request named.
    answered_as: str


def prepare(
    runtime: ModelRuntime, caller: Principal, body: ChatCompletionCreate | CompletionCreate
) -> PreparedCompletion:
    """The request ready to submit, or an ``ApiError`` saying why it cannot be served."""
    assert caller.user_id is not None  # completions need a user's key (serving.deps)
    user_id = caller.user_id
    # What the request asks for is checked first: a field Tailor cannot honour
    # is the caller's to fix, whatever state the models are in.
    if body.n != 1:
        raise ApiError(
            400, "n must be 1: Tailor returns one choice per request", code="unsupported"
        )
    try:
        check_parameters(body.model_extra or {})
    except UnsupportedParameter as exc:
        raise ApiError(400, str(exc), code="unsupported_parameter") from None
    grammar = response_grammar(body)
    if runtime.load_error is not None:
        raise ApiError(503, "the models failed to load; see the server log", code="not_ready")
    if not runtime.loaded.is_set():
        raise ApiError(
            503, "the models are still loading", code="not_ready", headers={"Retry-After": "5"}
        )
    requested = None if body.model == "auto" else body.model
    # A fine-tuned model (ft:...) is its base model with that specialist version pinned:
    # the base model is forced, the caller's current experts are not asked.
    pinned = _pinned_experts(runtime, body, user_id) if looks_fine_tuned(body.model) else None
    if pinned is not None:
        requested = pinned.base_model_id
    if requested is not None and requested not in runtime.models:
        raise ApiError(404, f"the model {body.model!r} does not exist", code="model_not_found")
    if isinstance(body, ChatCompletionCreate):
        endpoint: Endpoint = "chat.completions"
        prompt_text, routing_text = body.transcript, body.routing_text
        logged: dict[str, Any] = {"messages": [m.model_dump() for m in body.messages]}
    else:
        endpoint = "completions"
        try:
            prompt_text = body.prompt_text
        except ValueError as exc:
            raise ApiError(400, str(exc), code="invalid_prompt") from None
        routing_text = prompt_text
        logged = {"prompt": prompt_text}
    try:
        decision = runtime.router.route(
            route_request(runtime, caller, body, routing_text, prompt_text, requested),
            runtime.candidates,
        )
    except BudgetNotMet as exc:
        raise ApiError(400, str(exc), code="budget_not_met") from None
    except NoRoute as exc:
        raise ApiError(400, str(exc), code="no_route") from None
    served = runtime.models[decision.model]
    if isinstance(body, ChatCompletionCreate):
        prompt = _chat_prompt(served, body)
    else:
        prompt = Prompt(list(served.tokenizer(prompt_text)["input_ids"]))
    prompt_ids = prompt.ids
    if not prompt_ids:
        raise ApiError(400, "the prompt is empty", code="invalid_prompt")
    defaults = served.generation_defaults
    room = served.context_length - len(prompt_ids)
    max_tokens = body.requested_max_tokens or min(defaults.max_tokens, room)
    if room < 1 or max_tokens > room:
        raise ApiError(
            400,
            f"the prompt has {len(prompt_ids)} tokens and max_tokens is {max_tokens}, "
            f"but {served.model_id} takes {served.context_length} in all",
            code="context_length_exceeded",
        )
    try:
        params = sampling(body, defaults, max_tokens, grammar)
    except ValueError as exc:
        raise ApiError(400, str(exc), code="invalid_sampling") from None
    experts = pinned or runtime.expert_sets.get(
        base_model_id=served.model_id, user_id=user_id, personalize=body.personalize
    )
    response_id = new_id("chatcmpl" if endpoint == "chat.completions" else "cmpl")
    settings = runtime.services.settings
    now = time.monotonic()
    slo = decision.details.get("latency_slo_s") or settings.router.latency_slo_seconds
    logged.update(_logged_params(body, params))
    return PreparedCompletion(
        endpoint=endpoint,
        response_id=response_id,
        created=int(time.time()),
        user_id=user_id,
        model=served,
        decision=decision,
        experts=experts,
        request=GenerationRequest(
            request_id=response_id,
            prompt_ids=tuple(prompt_ids),
            params=params,
            experts=None if experts.is_empty else experts,
            deadline=now + settings.engine.request_timeout_seconds,
            slo_deadline=None if slo is None else now + float(slo),
            predicted_tokens=min(decision.predicted_tokens or max_tokens, max_tokens),
            turn_markers=prompt.turn_markers,
            answer_lead=prompt.answer_lead,
        ),
        logged_request=logged,
        answered_as=body.model if pinned is not None else served.model_id,
    )


def _pinned_experts(
    runtime: ModelRuntime, body: ChatCompletionCreate | CompletionCreate, user_id: str
) -> ExpertSet:
    """The experts a fine-tuned model id pins; a 404 for an id that names none of the
    caller's (another user's included)."""
    if not body.personalize:
        raise ApiError(
            400,
            "personalize: false asks for the bare base model, and a fine-tuned model is "
            "not one; name its base model instead",
            code="unsupported_parameter",
        )
    pinned = runtime.pinned_sets.get(model_id=body.model, user_id=user_id)
    if pinned is None:
        raise ApiError(404, f"the model {body.model!r} does not exist", code="model_not_found")
    return pinned


def _chat_prompt(served: ServedModel, body: ChatCompletionCreate) -> Prompt:
    messages = [
        {"role": m.role if m.role != "developer" else "system", "content": m.text}
        for m in body.messages
    ]
    # The same form the fine-tune worker trains on.
    ids = chat_format.prompt_ids(served.tokenizer, messages)
    if served.has_chat_template:
        return Prompt(ids)
    return Prompt(ids, TRANSCRIPT_TURN_MARKERS, TRANSCRIPT_ANSWER_LEAD)


def route_request(
    runtime: ModelRuntime,
    caller: Principal,
    body: ChatCompletionCreate | CompletionCreate,
    routing_text: str,
    prompt_text: str,
    requested: str | None,
) -> RouteRequest:
    """The request's routing limits; what it leaves out, the caller's preferences."""
    assert caller.user_id is not None
    preferences = caller.routing
    return RouteRequest(
        requires_chat=isinstance(body, ChatCompletionCreate),
        experts=_expert_evidence(runtime, caller.user_id, personalize=body.personalize),
        user_id=caller.user_id,
        prompt_text=routing_text,
        # Before a model is chosen there is no tokenizer: ~4 characters a token.
        prompt_tokens=len(prompt_text) // 4,
        max_tokens=body.requested_max_tokens or ROUTING_MAX_TOKENS,
        requested_model=requested,
        max_price_per_million=(
            body.max_price if body.max_price is not None else preferences.max_price
        ),
        strict_budget=body.strict_budget,
        cost_weight=body.cost_weight if body.cost_weight is not None else preferences.cost_weight,
        latency_slo_seconds=(
            body.latency_slo_seconds
            if body.latency_slo_seconds is not None
            else preferences.latency_slo_seconds
        ),
    )


def _expert_evidence(
    runtime: ModelRuntime, user_id: str, *, personalize: bool
) -> tuple[ExpertEvidence, ...]:
    """The caller's experts on each base model, so that the router scores every model
    with the experts it would answer with (cached per replica: no SQL per request)."""
    found = []
    for candidate in runtime.candidates:
        experts = runtime.expert_sets.get(
            base_model_id=candidate.model, user_id=user_id, personalize=personalize
        )
        if experts.is_empty:
            continue
        specialist = experts.specialist
        found.append(
            ExpertEvidence(
                model=candidate.model,
                specialist_version_id=None if specialist is None else specialist.version_id,
                generalists=len(experts.generalists),
                gain=None if specialist is None else specialist.relative_gain,
                significant=specialist is not None and specialist.gain_significant,
            )
        )
    return tuple(found)


def response_grammar(body: ChatCompletionCreate | CompletionCreate) -> str | None:
    """The grammar ``response_format`` asks the output to follow; None: free text.

    A JSON schema that cannot be compiled is the caller's to fix: a 400 naming
    what is wrong, before any model is asked.
    """
    requested = body.response_format
    if requested is None or requested.type == "text":
        return None
    schema = requested.json_schema.schema_ if requested.json_schema is not None else None
    try:
        # json_schema without a schema is any JSON object, as json_object is.
        return json_grammar(schema)
    except ConstraintFailed as exc:
        raise ApiError(400, f"response_format: {exc}", code="invalid_response_format") from None


def sampling(
    body: ChatCompletionCreate | CompletionCreate,
    defaults: GenerationDefaults,
    max_tokens: int,
    grammar: str | None = None,
) -> SamplingParams:
    """The request's sampling; what it leaves out, the model's defaults."""
    stop = body.stop_sequences
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=defaults.temperature if body.temperature is None else body.temperature,
        top_p=defaults.top_p if body.top_p is None else body.top_p,
        stop=defaults.stop if stop is None else stop,
        seed=body.seed,
        logprobs=body.logprobs_asked,
        grammar=grammar,
    )


def _logged_params(body: SamplingFields, params: SamplingParams) -> dict[str, Any]:
    # What the answer was sampled with, defaults included.
    return {
        "model": body.model,
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "stop": list(params.stop),
        "seed": body.seed,
        "logprobs": params.logprobs,
        "personalize": body.personalize,
        "max_price": body.max_price,
        "strict_budget": body.strict_budget,
        "cost_weight": body.cost_weight,
        "latency_slo_seconds": body.latency_slo_seconds,
        "response_format": (
            None
            if body.response_format is None
            else body.response_format.model_dump(by_alias=True, exclude_none=True)
        ),
    }
