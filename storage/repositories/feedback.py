"""Feedback on responses: ratings and pairwise preferences."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.clock import utc_now
from storage.repositories.responses import ResponseRepository
from storage.tables import Feedback

VALID_RATINGS = (-1, 0, 1)


class FeedbackRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def record(
        self,
        *,
        user_id: str,
        response_id: str,
        rating: int | None = None,
        preferred_over_id: str | None = None,
    ) -> tuple[Feedback, bool]:
        """Store one piece of feedback; returns it and whether it was new.

        Exactly one of ``rating`` and ``preferred_over_id`` is given. Both
        responses must be the user's own (else ``NotFound``). The same
        feedback sent twice is stored once: the second call returns the first
        row and ``False``.
        """
        if (rating is None) == (preferred_over_id is None):
            raise ValueError("give either a rating or preferred_over, not both or neither")
        if rating is not None and rating not in VALID_RATINGS:
            raise ValueError(f"rating must be one of {VALID_RATINGS}")
        if preferred_over_id == response_id:
            raise ValueError("a response cannot be preferred over itself")
        responses = ResponseRepository(self.session)
        responses.get_for_user(response_id=response_id, user_id=user_id)
        if preferred_over_id is not None:
            responses.get_for_user(response_id=preferred_over_id, user_id=user_id)
            dedupe_key = f"prefer:{response_id}>{preferred_over_id}"
        else:
            dedupe_key = f"rate:{response_id}:{rating}"

        existing = self._find(user_id=user_id, dedupe_key=dedupe_key)
        if existing is not None:
            return existing, False
        feedback = Feedback(
            user_id=user_id,
            response_id=response_id,
            rating=rating,
            preferred_over_id=preferred_over_id,
            dedupe_key=dedupe_key,
            created_at=utc_now(),
        )
        try:
            with self.session.begin_nested():
                self.session.add(feedback)
        except IntegrityError:
            # A concurrent request stored the same feedback first.
            winner = self._find(user_id=user_id, dedupe_key=dedupe_key)
            assert winner is not None
            return winner, False
        return feedback, True

    def _find(self, *, user_id: str, dedupe_key: str) -> Feedback | None:
        query = select(Feedback).where(
            Feedback.user_id == user_id, Feedback.dedupe_key == dedupe_key
        )
        return self.session.scalar(query)

    def count(self, *, user_id: str | None = None) -> int:
        query = select(func.count()).select_from(Feedback)
        if user_id is not None:
            query = query.where(Feedback.user_id == user_id)
        return self.session.scalar(query) or 0

    def list_after(self, *, after_id: int = 0, limit: int = 1000) -> list[Feedback]:
        """Feedback in the order it arrived, for replaying the router's state."""
        query = select(Feedback).where(Feedback.id > after_id).order_by(Feedback.id).limit(limit)
        return list(self.session.scalars(query))
