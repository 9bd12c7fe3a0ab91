"""Snapshots of the router's ratings, per scope (``global`` or ``user:<id>``)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.clock import utc_now
from storage.tables import RoutingRating

GLOBAL_SCOPE = "global"


def user_scope(user_id: str) -> str:
    return f"user:{user_id}"


class RoutingRatingRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def save(
        self, *, scope: str, base_model_id: str, rating: float, games: int, last_feedback_id: int
    ) -> RoutingRating:
        row = self.session.get(RoutingRating, (scope, base_model_id))
        if row is None:
            row = RoutingRating(scope=scope, base_model_id=base_model_id)
            self.session.add(row)
        row.rating = rating
        row.games = games
        row.last_feedback_id = last_feedback_id
        row.updated_at = utc_now()
        self.session.flush()
        return row

    def list_all(self, *, scope: str | None = None) -> list[RoutingRating]:
        query = select(RoutingRating).order_by(RoutingRating.scope, RoutingRating.base_model_id)
        if scope is not None:
            query = query.where(RoutingRating.scope == scope)
        return list(self.session.scalars(query))
