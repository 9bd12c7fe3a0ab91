"""From an OpenAI-style request to engine work and back to OpenAI-style answers.

Shared by ``/v1/chat/completions`` and ``/v1/completions``: route the request
to a base model, resolve the caller's experts, tokenize, submit, and log the
response with its routing decision and experts so feedback can refer to it.

Invariant: the router's load ticket opened by ``submit`` is closed exactly
once however the request ends (answered, failed in the engine, an error while
logging it, the client gone, the stream closed before it began), or the
router would believe the model busier than it is.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

from adapters.expert_sets import ExpertSet
from models import chat_format
from router import BudgetNotMet, ExpertEvidence, NoRoute, RouteRequest, RoutingDecision
from router.load import Ticket
from router.state_sync import embedding_bytes
from serving.backend import EventStream
from serving.engine.engine import (
    EngineOverloaded,
    EngineStopped,
    InvalidSampling,
    RequestFailed,
)
from serving.engine.requests import Failed, Finished, GenerationRequest, TextDelta
from serving.engine.sampling import SamplingParams
from serving.errors import ApiError, error_body
from serving.generation_defaults import BUILT_IN, GenerationDefaults
from serving.metrics import Metrics
from serving.openai_schemas import ChatCompletionCreate, CompletionCreate, SamplingFields
from serving.runtime import ModelRuntime, ServedModel
from storage.errors import BackendUnavailable
from storage.ids import new_id
from storage.repositories import ResponseRepository, UserRepository

logger = logging.getLogger(__name__)

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


def prepare(
    runtime: ModelRuntime,
    *,
    user_id: str,
    body: ChatCompletionCreate | CompletionCreate,
) -> PreparedCompletion:
    if runtime.load_error is not None:
        raise ApiError(503, "the models failed to load; see the server log", code="not_ready")
    if not runtime.loaded.is_set():
        raise ApiError(
            503, "the models are still loading", code="not_ready", headers={"Retry-After": "5"}
        )
    if body.n != 1:
        raise ApiError(
            400, "n must be 1: Tailor returns one choice per request", code="unsupported"
        )
    requested = None if body.model == "auto" else body.model
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
            _route_request(runtime, user_id, body, routing_text, prompt_text, requested),
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
        params = _sampling(body, defaults, max_tokens)
    except ValueError as exc:
        raise ApiError(400, str(exc), code="invalid_sampling") from None
    experts = runtime.expert_sets.get(
        base_model_id=served.model_id, user_id=user_id, personalize=body.personalize
    )
    response_id = new_id("chatcmpl" if endpoint == "chat.completions" else "cmpl")
    settings = runtime.services.settings
    now = time.monotonic()
    slo = decision.details.get("latency_slo_s") or settings.router_latency_slo_seconds
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
            deadline=now + settings.request_timeout_seconds,
            slo_deadline=None if slo is None else now + float(slo),
            predicted_tokens=min(decision.predicted_tokens or max_tokens, max_tokens),
            turn_markers=prompt.turn_markers,
            answer_lead=prompt.answer_lead,
        ),
        logged_request=logged,
    )


def _route_request(
    runtime: ModelRuntime,
    user_id: str,
    body: ChatCompletionCreate | CompletionCreate,
    routing_text: str,
    prompt_text: str,
    requested: str | None,
) -> RouteRequest:
    """The request's routing limits, falling back to the user's preferences."""
    with runtime.services.database.session() as session:
        user = UserRepository(session).get(user_id=user_id)
        cost_weight, max_price, slo = (
            user.route_cost_weight,
            user.route_max_price,
            user.route_latency_slo_seconds,
        )
    return RouteRequest(
        requires_chat=isinstance(body, ChatCompletionCreate),
        experts=_expert_evidence(runtime, user_id, personalize=body.personalize),
        user_id=user_id,
        prompt_text=routing_text,
        # Before a model is chosen there is no tokenizer: ~4 characters a token.
        prompt_tokens=len(prompt_text) // 4,
        max_tokens=body.requested_max_tokens or ROUTING_MAX_TOKENS,
        requested_model=requested,
        max_price_per_million=body.max_price if body.max_price is not None else max_price,
        strict_budget=body.strict_budget,
        cost_weight=body.cost_weight if body.cost_weight is not None else cost_weight,
        latency_slo_seconds=(
            body.latency_slo_seconds if body.latency_slo_seconds is not None else slo
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


def _sampling(
    body: SamplingFields, defaults: GenerationDefaults, max_tokens: int
) -> SamplingParams:
    """The request's sampling; what it leaves out, the model's defaults."""
    stop = body.stop_sequences
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=defaults.temperature if body.temperature is None else body.temperature,
        top_p=defaults.top_p if body.top_p is None else body.top_p,
        stop=defaults.stop if stop is None else stop,
        seed=body.seed,
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
        "personalize": body.personalize,
        "max_price": body.max_price,
        "strict_budget": body.strict_budget,
        "cost_weight": body.cost_weight,
        "latency_slo_seconds": body.latency_slo_seconds,
    }


def submit(runtime: ModelRuntime, prepared: PreparedCompletion) -> tuple[EventStream, Ticket]:
    """Start the work; the ticket tells the router's load ledger, and must be closed
    with ``finish_load`` however the request ends."""
    model = prepared.model.model_id
    ticket = runtime.load.started(model, prepared.request.predicted_tokens or 0)
    try:
        return runtime.backend.start(model, prepared.request), ticket
    except EngineOverloaded as exc:
        runtime.load.finished(ticket)
        raise ApiError(503, str(exc), code="overloaded", headers={"Retry-After": "1"}) from None
    except EngineStopped as exc:
        runtime.load.finished(ticket)
        raise ApiError(503, str(exc), code="not_ready") from None
    except BaseException:
        runtime.load.finished(ticket)
        raise


def record(
    runtime: ModelRuntime, prepared: PreparedCompletion, finished: Finished, latency_ms: float
) -> None:
    vector = prepared.decision.query_vector
    with runtime.services.database.session() as session:
        ResponseRepository(session).record(
            response_id=prepared.response_id,
            user_id=prepared.user_id,
            base_model_id=prepared.model.model_id,
            endpoint=prepared.endpoint,
            request=prepared.logged_request,
            output_text=finished.text,
            finish_reason=finish_reason(finished),
            routing_decision=prepared.decision.logged(),
            adapters_used=prepared.experts.describe(),
            prompt_tokens=finished.prompt_tokens,
            completion_tokens=finished.completion_tokens,
            latency_ms=latency_ms,
            query_embedding=None if vector is None else embedding_bytes(vector),
        )
    router = runtime.learning_router
    # A cut-short answer says little about how long the model would have gone on.
    if router is not None and vector is not None and finished.reason in ("stop", "length"):
        router.observe_length(
            prepared.model.model_id,
            vector,
            prompt_tokens=finished.prompt_tokens,
            completion_tokens=finished.completion_tokens,
        )


def observe(
    runtime: ModelRuntime,
    metrics: Metrics,
    prepared: PreparedCompletion,
    finished: Finished,
    *,
    first_token_seconds: float | None,
    total_seconds: float,
) -> None:
    model = prepared.model.model_id
    metrics.tokens.labels(model, "prompt").inc(finished.prompt_tokens)
    metrics.tokens.labels(model, "completion").inc(finished.completion_tokens)
    metrics.routing_decisions.labels(model, prepared.decision.reason).inc()
    decision_ms = prepared.decision.details.get("decision_ms")
    if decision_ms is not None:
        metrics.routing_seconds.observe(decision_ms / 1000)
    metrics.completion_seconds.labels(model).observe(total_seconds)
    if first_token_seconds is not None:
        metrics.first_token_seconds.labels(model).observe(first_token_seconds)
    price = next((c.cost_per_million_tokens for c in runtime.candidates if c.model == model), 0.0)
    metrics.cost.labels(model).inc(
        (finished.prompt_tokens + finished.completion_tokens) / 1e6 * price
    )


def finish_reason(finished: Finished) -> str:
    # OpenAI clients know "stop" and "length"; a timeout or cancellation cut
    # the answer short, which is what "length" means to them.
    return "stop" if finished.reason == "stop" else "length"


def tailor_extra(prepared: PreparedCompletion, finished: Finished | None = None) -> dict[str, Any]:
    extra: dict[str, Any] = {
        "route": prepared.decision.public(),
        "adapters": prepared.experts.describe(),
    }
    if finished is not None and finished.reason not in ("stop", "length"):
        extra["ended_by"] = finished.reason
    return extra


async def run_to_completion(
    runtime: ModelRuntime, metrics: Metrics, prepared: PreparedCompletion
) -> dict[str, Any]:
    started = time.perf_counter()
    first_token: float | None = None
    events, ticket = submit(runtime, prepared)
    finished: Finished | None = None
    try:
        async for event in events:
            if isinstance(event, TextDelta) and first_token is None:
                first_token = time.perf_counter() - started
            elif isinstance(event, Finished):
                finished = event
            elif isinstance(event, Failed):
                raise generation_error(prepared, event.error)
    finally:
        try:
            events.cancel()  # a no-op when done; stops the work if the client left
        finally:
            finish_load(runtime, ticket, finished, first_token, time.perf_counter() - started)
    if finished is None:
        # The events ended without a final one: nothing to answer with.
        raise generation_error(prepared, None)
    total = time.perf_counter() - started
    await asyncio.to_thread(record, runtime, prepared, finished, total * 1000)
    observe(
        runtime, metrics, prepared, finished, first_token_seconds=first_token, total_seconds=total
    )
    return _final_body(prepared, finished)


def generation_error(prepared: PreparedCompletion, error: BaseException | None) -> ApiError:
    """What the caller is told when the engine failed their request."""
    if isinstance(error, EngineStopped):
        return ApiError(
            503,
            f"{prepared.model.model_id} is not serving right now; try again shortly",
            code="not_ready",
            headers={"Retry-After": "5"},
        )
    if isinstance(error, InvalidSampling):
        return ApiError(400, str(error), code="invalid_sampling")
    if isinstance(error, RequestFailed):
        # Its message says what failed for this request and is safe to show.
        logger.warning("request %s failed: %s", prepared.response_id, error)
        return ApiError(500, str(error), code="generation_failed")
    # Anything else (a backend's own error) may carry internals: log it, say little.
    logger.error("request %s failed in the backend", prepared.response_id, exc_info=error)
    return ApiError(500, "generation failed for this request", code="generation_failed")


def finish_load(
    runtime: ModelRuntime,
    ticket: Ticket,
    finished: Finished | None,
    first_token_seconds: float | None,
    total_seconds: float,
) -> None:
    """Close the load ticket; only a complete answer teaches the router its speed."""
    if finished is None or finished.reason not in ("stop", "length"):
        runtime.load.finished(ticket)
        return
    runtime.load.finished(
        ticket,
        first_token_seconds=first_token_seconds,
        total_seconds=total_seconds,
        completion_tokens=finished.completion_tokens,
    )


def _usage(finished: Finished) -> dict[str, int]:
    return {
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.completion_tokens,
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
    }


def _envelope(prepared: PreparedCompletion, kind: str, choice: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": prepared.response_id,
        "object": kind,
        "created": prepared.created,
        "model": prepared.model.model_id,
        "choices": [choice],
    }


def _final_body(prepared: PreparedCompletion, finished: Finished) -> dict[str, Any]:
    reason = finish_reason(finished)
    if prepared.endpoint == "chat.completions":
        message = {"role": "assistant", "content": finished.text}
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": reason}
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": finished.text, "finish_reason": reason}
        kind = "text_completion"
    choice["logprobs"] = None
    body = _envelope(prepared, kind, choice)
    body["usage"] = _usage(finished)
    body["tailor"] = tailor_extra(prepared, finished)
    return body


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


def stream(
    runtime: ModelRuntime,
    metrics: Metrics,
    prepared: PreparedCompletion,
    events: EventStream,
    ticket: Ticket,
) -> ClosingStream:
    """Server-sent events: one chunk per text delta, a last one with the finish reason, [DONE].

    The ticket is closed when the events end, and also when the body is closed
    before it was ever iterated (an async generator's ``finally`` would not run then).
    """
    closer = _StreamEnd(runtime, events, ticket)
    return ClosingStream(_stream_events(metrics, prepared, events, closer), closer.close)


class _StreamEnd:
    """Cancels a stream's work and closes its ticket, once."""

    def __init__(self, runtime: ModelRuntime, events: EventStream, ticket: Ticket) -> None:
        self._runtime = runtime
        self._events = events
        self._ticket = ticket
        self._done = False

    @property
    def runtime(self) -> ModelRuntime:
        return self._runtime

    def close(
        self,
        finished: Finished | None = None,
        first_token_seconds: float | None = None,
        total_seconds: float = 0.0,
    ) -> None:
        if self._done:
            return
        self._done = True
        try:
            # The engine drops the row when the client left mid-answer.
            self._events.cancel()
        finally:
            finish_load(self._runtime, self._ticket, finished, first_token_seconds, total_seconds)


class ClosingStream:
    """An async iterator over ``body`` whose ``aclose`` runs ``close`` even if never started."""

    def __init__(self, body: AsyncIterator[str], close: Callable[[], None]) -> None:
        self._body = body
        self._close = close

    def __aiter__(self) -> ClosingStream:
        return self

    async def __anext__(self) -> str:
        return await anext(self._body)

    async def aclose(self) -> None:
        try:
            aclose = getattr(self._body, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            self._close()


async def _record_in_stream(
    runtime: ModelRuntime, prepared: PreparedCompletion, finished: Finished, latency_ms: float
) -> dict[str, Any] | None:
    """Record a streamed answer; None, or the error event to end the stream with."""
    try:
        await asyncio.to_thread(record, runtime, prepared, finished, latency_ms)
    except BackendUnavailable as exc:
        logger.error("could not record %s: %s", prepared.response_id, exc)
        return error_body(
            503,
            "the answer could not be saved: a backing service is unavailable; try again shortly",
            "backend_unavailable",
        )
    except Exception:
        logger.exception("could not record %s", prepared.response_id)
        return error_body(500, "the answer could not be saved", "internal_error")
    return None


async def _stream_events(
    metrics: Metrics, prepared: PreparedCompletion, events: EventStream, end: _StreamEnd
) -> AsyncIterator[str]:
    runtime = end.runtime
    started = time.perf_counter()
    chat = prepared.endpoint == "chat.completions"
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(delta: str | None, reason: str | None, role: bool = False) -> dict[str, Any]:
        if chat:
            body: dict[str, Any] = {"role": "assistant"} if role else {}
            if delta is not None:
                body["content"] = delta
            choice: dict[str, Any] = {"index": 0, "delta": body}
        else:
            choice = {"index": 0, "text": delta or ""}
        choice.update(finish_reason=reason, logprobs=None)
        return _envelope(prepared, kind, choice)

    first_token: float | None = None
    finished: Finished | None = None
    try:
        if chat:
            yield _sse(chunk("", None, role=True))
        async for event in events:
            if isinstance(event, TextDelta):
                if first_token is None:
                    first_token = time.perf_counter() - started
                yield _sse(chunk(event.text, None))
            elif isinstance(event, Finished):
                finished = event
                total = time.perf_counter() - started
                unsaved = await _record_in_stream(runtime, prepared, event, total * 1000)
                if unsaved is not None:
                    # The text went out, but without its record feedback
                    # could not refer to it: say so, as the non-streaming
                    # path does with its status.
                    yield _sse(unsaved)
                    break
                observe(
                    runtime,
                    metrics,
                    prepared,
                    event,
                    first_token_seconds=first_token,
                    total_seconds=total,
                )
                last = chunk(None, finish_reason(event))
                last["usage"] = _usage(event)
                last["tailor"] = tailor_extra(prepared, event)
                yield _sse(last)
            else:
                failure = generation_error(prepared, event.error)
                yield _sse(error_body(failure.status, failure.message, failure.code))
        yield "data: [DONE]\n\n"
    finally:
        # Runs when the client disconnects too.
        end.close(finished, first_token, time.perf_counter() - started)
