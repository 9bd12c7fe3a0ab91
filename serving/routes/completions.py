"""``POST /v1/chat/completions`` and ``POST /v1/completions`` (OpenAI-compatible)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from serving import completions
from serving.deps import MetricsDep, RateLimitedUserDep, RuntimeDep
from serving.metrics import Metrics
from serving.openai_schemas import (
    ChatCompletionCreate,
    ChatCompletionPublic,
    CompletionCreate,
    TextCompletionPublic,
)
from serving.runtime import ModelRuntime

router = APIRouter(prefix="/v1", tags=["completions"])


class CompletionStream(StreamingResponse):
    """A stream that closes its body however the response ends.

    The body holds the request's load ticket and engine work. Starlette does
    not close a body it never started iterating (the client gone before the
    first byte), so the response does it.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()


async def _answer(
    runtime: ModelRuntime,
    metrics: Metrics,
    user_id: str,
    body: ChatCompletionCreate | CompletionCreate,
) -> dict[str, Any] | CompletionStream:
    # Tokenizing and routing take milliseconds of CPU: off the event loop.
    prepared = await run_in_threadpool(completions.prepare, runtime, user_id=user_id, body=body)
    if not body.stream:
        return await completions.run_to_completion(runtime, metrics, prepared)
    events, ticket = completions.submit(runtime, prepared)
    return CompletionStream(
        completions.stream(runtime, metrics, prepared, events, ticket),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _streamed(chunk: str) -> dict[int | str, dict[str, Any]]:
    """The 200 of a completion route in the OpenAPI schema: JSON (the response model), or
    with ``"stream": true`` server-sent events, which a JSON schema cannot describe."""
    return {
        200: {
            "description": (
                'The completion; with "stream": true, text/event-stream: one '
                f"`data: <{chunk} JSON>` event per piece of text, a last chunk with "
                "finish_reason, usage and tailor (or an error event), then `data: [DONE]` "
                "(docs/api.md, section 3.6)"
            ),
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    }


# The bodies are built as dicts (serving.completions) and checked against the response
# model here; a stream is a Response of its own and passes by it.
@router.post(
    "/chat/completions",
    response_model=ChatCompletionPublic,
    responses=_streamed("chat.completion.chunk"),
)
async def chat_completions(
    body: ChatCompletionCreate, user: RateLimitedUserDep, runtime: RuntimeDep, metrics: MetricsDep
) -> dict[str, Any] | StreamingResponse:
    assert user.user_id is not None
    return await _answer(runtime, metrics, user.user_id, body)


@router.post(
    "/completions", response_model=TextCompletionPublic, responses=_streamed("text_completion")
)
async def text_completions(
    body: CompletionCreate, user: RateLimitedUserDep, runtime: RuntimeDep, metrics: MetricsDep
) -> dict[str, Any] | StreamingResponse:
    assert user.user_id is not None
    return await _answer(runtime, metrics, user.user_id, body)
