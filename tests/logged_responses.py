"""A response stored straight through the repository, as the API would have logged it: what
the router, feedback and calibration tests build their feedback on."""

from __future__ import annotations

import secrets
from typing import Any

from storage.database import Database
from storage.repositories import ResponseRepository


def log_response(
    database: Database,
    user_id: str,
    model: str,
    prompt: str = "hi",
    *,
    response_id: str | None = None,
    routing_decision: dict[str, Any] | None = None,
    query_embedding: bytes | None = None,
    completion_tokens: int = 7,
) -> str:
    """A chat answer by ``model`` to ``prompt``; a forced route unless a decision is given."""
    response_id = response_id or f"chatcmpl-{secrets.token_hex(8)}"
    with database.session() as session:
        ResponseRepository(session).record(
            response_id=response_id,
            user_id=user_id,
            base_model_id=model,
            endpoint="chat.completions",
            request={"messages": [{"role": "user", "content": prompt}]},
            output_text="...",
            finish_reason="stop",
            routing_decision=routing_decision or {"model": model, "reason": "forced"},
            adapters_used=[],
            prompt_tokens=5,
            completion_tokens=completion_tokens,
            query_embedding=query_embedding,
        )
    return response_id
