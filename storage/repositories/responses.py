"""Responses Tailor returned, with the routing decision and experts behind them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
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

    def recent_lengths(self, *, limit: int) -> list[tuple[str, bytes, int, int]]:
        """(model, query embedding, prompt tokens, completion tokens) of the latest
        ``limit`` responses that kept an embedding, oldest first."""
        query = (
            select(
                Response.base_model_id,
                Response.query_embedding,
                Response.prompt_tokens,
                Response.completion_tokens,
            )
            .where(Response.query_embedding.is_not(None))
            .order_by(Response.created_at.desc(), Response.id.desc())
            .limit(limit)
        )
        rows = [(m, e, p, c) for m, e, p, c in self.session.execute(query) if e is not None]
        return rows[::-1]

    def mix_since(self, *, since: datetime) -> list[tuple[str, int, int, int]]:
        """(model, responses, prompt tokens, completion tokens) per base model since ``since``."""
        query = (
            select(
                Response.base_model_id,
                func.count(),
                func.coalesce(func.sum(Response.prompt_tokens), 0),
                func.coalesce(func.sum(Response.completion_tokens), 0),
            )
            .where(Response.created_at >= since)
            .group_by(Response.base_model_id)
            .order_by(Response.base_model_id)
        )
        return [(m, int(n), int(p), int(c)) for m, n, p, c in self.session.execute(query)]
