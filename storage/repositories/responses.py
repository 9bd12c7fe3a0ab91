"""Responses Tailor returned, with the routing decision and experts behind them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.clock import utc_now
from storage.errors import NotFound
from storage.tables import Response


class ResponseRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def record(
        self,
        *,
        response_id: str,
        user_id: str,
        base_model_id: str,
        endpoint: str,
        request: dict[str, Any],
        output_text: str,
        finish_reason: str | None,
        routing_decision: dict[str, Any],
        adapters_used: list[dict[str, Any]],
        prompt_tokens: int,
        completion_tokens: int,
        latency_ms: float | None = None,
        query_embedding: bytes | None = None,
    ) -> Response:
        response = Response(
            id=response_id,
            user_id=user_id,
            base_model_id=base_model_id,
            endpoint=endpoint,
            request=request,
            output_text=output_text,
            finish_reason=finish_reason,
            routing_decision=routing_decision,
            adapters_used=adapters_used,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_ms=latency_ms,
            query_embedding=query_embedding,
            created_at=utc_now(),
        )
        self.session.add(response)
        self.session.flush()
        return response

    def get_for_user(self, *, response_id: str, user_id: str) -> Response:
        """The user's own response; another user's is reported as not found."""
        response = self.session.get(Response, response_id)
        if response is None or response.user_id != user_id:
            raise NotFound(f"response {response_id} not found")
        return response

    def list_for_user(self, *, user_id: str, limit: int = 100) -> list[Response]:
        query = (
            select(Response)
            .where(Response.user_id == user_id)
            .order_by(Response.created_at.desc(), Response.id.desc())
            .limit(limit)
        )
        return list(self.session.scalars(query))
