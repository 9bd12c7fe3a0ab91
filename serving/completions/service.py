"""``CompletionService``: one completion's path, from the caller's request to the logged answer.

route and prepare (``serving.completions.preparation``) -> open the router's load
ticket and submit to the backend -> collect the events, or stream them as server-sent
events (``serving.completions.wire``) -> log the response with its routing decision and
experts, so feedback can refer to it -> teach the router the answer's length and speed
-> close the ticket. The routes only hand it the caller and the body.

Invariants:
- the router's load ticket opened by ``submit`` is closed exactly once however the
  request ends (answered, failed in the engine, an error while logging it, the client
  gone, the stream closed before it began), or the router would believe the model
  busier than it is;
- one request's failure is reported to that request alone (an ``ApiError``, or an error
  event ending its stream), never raised into another's;
- only a complete answer ("stop" or "length") teaches the router its speed and length.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi.concurrency import run_in_threadpool

from router.load import Ticket
from router.state_sync import embedding_bytes
from serving.auth import Principal
from serving.backend import EventStream
from serving.completions import wire
from serving.completions.preparation import PreparedCompletion, prepare
from serving.completions.streaming import ClosingStream
from serving.engine.engine import EngineOverloaded, EngineStopped, InvalidSampling, RequestFailed
from serving.engine.requests import Failed, Finished, TextDelta
from serving.errors import ApiError, error_body
from serving.metrics import Metrics
from serving.openai_schemas import ChatCompletionCreate, CompletionCreate
from serving.runtime import ModelRuntime
from storage.errors import BackendUnavailable
from storage.repositories import ResponseRepository

logger = logging.getLogger(__name__)


class CompletionService:
    """Runs completions on ``runtime``'s models, recording what it serves in ``metrics``.

    Cheap to build (one per request is fine): it holds references, no state of its own.
    ``runtime`` is read at each step because its models, candidates and router are
    filled in once the models have loaded.
    """

    def __init__(self, runtime: ModelRuntime, metrics: Metrics) -> None:
        self.runtime = runtime
        self.metrics = metrics

    async def answer(
        self, caller: Principal, body: ChatCompletionCreate | CompletionCreate
    ) -> dict[str, Any] | ClosingStream:
        """The answer's body, or with ``"stream": true`` its server-sent events."""
        # Tokenizing and routing take milliseconds of CPU: off the event loop.
        prepared = await run_in_threadpool(self.prepare, caller, body)
        if not body.stream:
            return await self.run_to_completion(prepared)
        events, ticket = self.submit(prepared)
        return self.stream(prepared, events, ticket)

    def prepare(
        self, caller: Principal, body: ChatCompletionCreate | CompletionCreate
    ) -> PreparedCompletion:
        return prepare(self.runtime, caller, body)

    def submit(self, prepared: PreparedCompletion) -> tuple[EventStream, Ticket]:
        """Start the work; the ticket tells the router's load ledger, and must be closed
        with ``finish_load`` however the request ends."""
        runtime = self.runtime
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

    async def run_to_completion(self, prepared: PreparedCompletion) -> dict[str, Any]:
        started = time.perf_counter()
        first_token: float | None = None
        events, ticket = self.submit(prepared)
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
                self.finish_load(ticket, finished, first_token, time.perf_counter() - started)
        if finished is None:
            # The events ended without a final one: nothing to answer with.
            raise generation_error(prepared, None)
        total = time.perf_counter() - started
        await asyncio.to_thread(self.record, prepared, finished, total * 1000)
        self.observe(prepared, finished, first_token_seconds=first_token, total_seconds=total)
        return wire.final_body(prepared, finished)

    def stream(
        self, prepared: PreparedCompletion, events: EventStream, ticket: Ticket
    ) -> ClosingStream:
        """Server-sent events: one chunk per text delta, a last one with the finish reason,
        [DONE]. The ticket is closed when the events end, and also when the body is closed
        before it was ever iterated."""
        end = _StreamEnd(self, events, ticket)
        return ClosingStream(self._stream_events(prepared, events, end), end.close)

    async def _stream_events(
        self, prepared: PreparedCompletion, events: EventStream, end: _StreamEnd
    ) -> AsyncIterator[str]:
        started = time.perf_counter()
        first_token: float | None = None
        finished: Finished | None = None
        try:
            if prepared.endpoint == "chat.completions":
                yield wire.sse(wire.chunk(prepared, "", None, role=True))
            async for event in events:
                if isinstance(event, TextDelta):
                    if first_token is None:
                        first_token = time.perf_counter() - started
                    tokens = (
                        event.logprobs if prepared.request.params.logprobs is not None else None
                    )
                    yield wire.sse(wire.chunk(prepared, event.text, None, tokens=tokens))
                elif isinstance(event, Finished):
                    finished = event
                    total = time.perf_counter() - started
                    unsaved = await self._record_in_stream(prepared, event, total * 1000)
                    if unsaved is not None:
                        # The text went out, but without its record feedback could not
                        # refer to it: say so, as the non-streaming path does with its status.
                        yield wire.sse(unsaved)
                        break
                    self.observe(
                        prepared, event, first_token_seconds=first_token, total_seconds=total
                    )
                    yield wire.sse(wire.last_chunk(prepared, event))
                else:
                    failure = generation_error(prepared, event.error)
                    yield wire.sse(error_body(failure.status, failure.message, failure.code))
            yield wire.SSE_DONE
        finally:
            # Runs when the client disconnects too.
            end.close(finished, first_token, time.perf_counter() - started)

    async def _record_in_stream(
        self, prepared: PreparedCompletion, finished: Finished, latency_ms: float
    ) -> dict[str, Any] | None:
        """Record a streamed answer; None, or the error event to end the stream with."""
        try:
            await asyncio.to_thread(self.record, prepared, finished, latency_ms)
        except BackendUnavailable as exc:
            logger.error("could not record %s: %s", prepared.response_id, exc)
            return error_body(
                503,
                "the answer could not be saved: a backing service is unavailable; "
                "try again shortly",
                "backend_unavailable",
            )
        except Exception:
            logger.exception("could not record %s", prepared.response_id)
            return error_body(500, "the answer could not be saved", "internal_error")
        return None

    def record(self, prepared: PreparedCompletion, finished: Finished, latency_ms: float) -> None:
        """Log the response (feedback refers to it), then teach the router its length."""
        runtime = self.runtime
        vector = prepared.decision.query_vector
        with runtime.services.database.session() as session:
            ResponseRepository(session).record(
                response_id=prepared.response_id,
                user_id=prepared.user_id,
                base_model_id=prepared.model.model_id,
                endpoint=prepared.endpoint,
                request=prepared.logged_request,
                output_text=finished.text,
                finish_reason=wire.finish_reason(finished),
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
        self,
        prepared: PreparedCompletion,
        finished: Finished,
        *,
        first_token_seconds: float | None,
        total_seconds: float,
    ) -> None:
        """The answer's tokens, times and cost in the Prometheus metrics."""
        metrics = self.metrics
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
        price = next(
            (c.cost_per_million_tokens for c in self.runtime.candidates if c.model == model), 0.0
        )
        metrics.cost.labels(model).inc(
            (finished.prompt_tokens + finished.completion_tokens) / 1e6 * price
        )

    def finish_load(
        self,
        ticket: Ticket,
        finished: Finished | None,
        first_token_seconds: float | None,
        total_seconds: float,
    ) -> None:
        """Close the load ticket; only a complete answer teaches the router its speed."""
        load = self.runtime.load
        if finished is None or finished.reason not in ("stop", "length"):
            load.finished(ticket)
            return
        load.finished(
            ticket,
            first_token_seconds=first_token_seconds,
            total_seconds=total_seconds,
            completion_tokens=finished.completion_tokens,
        )


class _StreamEnd:
    """Cancels a stream's work and closes its ticket, once."""

    def __init__(self, service: CompletionService, events: EventStream, ticket: Ticket) -> None:
        self._service = service
        self._events = events
        self._ticket = ticket
        self._done = False

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
            self._service.finish_load(self._ticket, finished, first_token_seconds, total_seconds)


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
