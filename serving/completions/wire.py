"""The OpenAI wire format of a completion: the final bodies and the streamed chunks.

Pure functions of a prepared completion and the engine's events; nothing here talks
to the engine, the database or the router. The bodies are checked against the response
models (``serving.openai_schemas``) by the routes and by ``tests/test_openapi_contract.py``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from serving.completions.preparation import PreparedCompletion
from serving.engine.requests import Finished, TokenLogprob


def finish_reason(finished: Finished) -> str:
    # OpenAI clients know "stop" and "length"; a timeout or cancellation cut
    # the answer short, which is what "length" means to them.
    return "stop" if finished.reason == "stop" else "length"


def tailor_extra(prepared: PreparedCompletion, finished: Finished | None = None) -> dict[str, Any]:
    """Tailor's own field: the routing decision and the experts that answered."""
    extra: dict[str, Any] = {
        "route": prepared.decision.public(),
        "adapters": prepared.experts.describe(),
    }
    if finished is not None and finished.reason not in ("stop", "length"):
        extra["ended_by"] = finished.reason
    return extra


def usage(finished: Finished) -> dict[str, int]:
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
        "model": prepared.answered_as,
        "choices": [choice],
    }


def final_body(prepared: PreparedCompletion, finished: Finished) -> dict[str, Any]:
    """The whole answer (``"stream": false``)."""
    reason = finish_reason(finished)
    if prepared.endpoint == "chat.completions":
        message = {"role": "assistant", "content": finished.text}
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": reason}
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": finished.text, "finish_reason": reason}
        kind = "text_completion"
    choice["logprobs"] = logprobs(prepared, finished.logprobs)
    body = _envelope(prepared, kind, choice)
    body["usage"] = usage(finished)
    body["tailor"] = tailor_extra(prepared, finished)
    return body


def chunk(
    prepared: PreparedCompletion,
    delta: str | None,
    reason: str | None,
    *,
    role: bool = False,
    tokens: Sequence[TokenLogprob] | None = None,
) -> dict[str, Any]:
    """One streamed piece: a chat delta (the first carries the role) or a text piece.

    ``tokens``: the log-probabilities of the tokens the piece was made of, when asked for.
    """
    if prepared.endpoint == "chat.completions":
        body: dict[str, Any] = {"role": "assistant"} if role else {}
        if delta is not None:
            body["content"] = delta
        choice: dict[str, Any] = {"index": 0, "delta": body}
        kind = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": delta or ""}
        kind = "text_completion"
    choice.update(finish_reason=reason, logprobs=logprobs(prepared, tokens))
    return _envelope(prepared, kind, choice)


def logprobs(
    prepared: PreparedCompletion, tokens: Sequence[TokenLogprob] | None
) -> dict[str, Any] | None:
    """The ``logprobs`` of a choice in its endpoint's form; None when not asked for.

    Chat: ``{"content": [{token, logprob, bytes, top_logprobs}], "refusal": None}``.
    Text completions (the legacy form): parallel lists ``tokens``,
    ``token_logprobs``, ``top_logprobs`` (a dict per token) and ``text_offset``.
    """
    if tokens is None:
        return None
    if prepared.endpoint == "chat.completions":
        return {
            "content": [
                {
                    **_token(t.token, t.logprob),
                    "top_logprobs": [_token(piece, lp) for piece, lp in t.top],
                }
                for t in tokens
            ],
            "refusal": None,
        }
    offsets, offset = [], 0
    for t in tokens:
        offsets.append(offset)
        offset += len(t.token)
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [_finite(t.logprob) for t in tokens],
        "top_logprobs": [{piece: _finite(lp) for piece, lp in t.top} for t in tokens],
        "text_offset": offsets,
    }


def _token(piece: str, logprob: float) -> dict[str, Any]:
    return {"token": piece, "logprob": _finite(logprob), "bytes": list(piece.encode("utf-8"))}


# JSON has no -Infinity: a probability that underflows to zero is reported as
# OpenAI does, with this floor.
LOGPROB_FLOOR = -9999.0


def _finite(logprob: float) -> float:
    return logprob if logprob > LOGPROB_FLOOR else LOGPROB_FLOOR


def last_chunk(prepared: PreparedCompletion, finished: Finished) -> dict[str, Any]:
    """The stream's last chunk: the finish reason, usage and Tailor's field."""
    last = chunk(prepared, None, finish_reason(finished))
    last["usage"] = usage(finished)
    last["tailor"] = tailor_extra(prepared, finished)
    return last


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


SSE_DONE = "data: [DONE]\n\n"
