"""``POST /v1/chat/completions`` and ``POST /v1/completions`` (OpenAI-compatible)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from serving.auth import Principal
from serving.completions import CompletionService
from serving.deps import CompletionServiceDep, RateLimitedUserDep
from serving.openai_schemas import (
    ChatCompletionCreate,
    ChatCompletionPublic,
    CompletionCreate,
    TextCompletionPublic,
)

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
    service: CompletionService, user: Principal, body: ChatCompletionCreate | CompletionCreate
) -> dict[str, Any] | CompletionStream:
    answer = await service.answer(user, body)
    if isinstance(answer, dict):
        return answer
    return CompletionStream(
        answer,
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


# The bodies are built as dicts (serving.completions.wire) and checked against the response
# model here; a stream is a Response of its own and passes by it.
@router.post(
    "/chat/completions",
    response_model=ChatCompletionPublic,
    responses=_streamed("chat.completion.chunk"),
)
async def chat_completions(
    body: ChatCompletionCreate, user: RateLimitedUserDep, service: CompletionServiceDep
) -> dict[str, Any] | StreamingResponse:
    return await _answer(service, user, body)


@router.post(
    "/completions", response_model=TextCompletionPublic, responses=_streamed("text_completion")
)
async def text_completions(
    body: CompletionCreate, user: RateLimitedUserDep, service: CompletionServiceDep
) -> dict[str, Any] | StreamingResponse:
    return await _answer(service, user, body)
