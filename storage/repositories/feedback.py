"""Feedback on responses: ratings and pairwise preferences.

A user has one vote per response they rate and one per pair of responses they
compare, so that no user moves the router by more than one vote by repeating
or contradicting themselves:

- the same feedback again is the stored row (``record`` returns it as not new);
- a different rating of a response this user rated, or the reverse of a
  preference this user gave, is refused with ``Conflict`` and nothing is stored.

Both checks run after ``_serialise_feedback_ids`` has made this transaction
the only feedback writer (PostgreSQL's advisory lock; SQLite's one writer), so
two concurrent conflicting votes cannot both be stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from storage.clock import utc_now
from storage.errors import Conflict, InvalidInput
from storage.repositories.responses import ResponseRepository
from storage.tables import Feedback, Response, User

# Any fixed number: the key of the PostgreSQL advisory lock that orders feedback.
_FEEDBACK_ORDER_LOCK = 0x7461696C6F72  # "tailor"


@dataclass(frozen=True)
class FeedbackForRouting:
    """A piece of feedback with the base models of the responses it is about."""

    feedback_id: int
    user_id: str
    response_id: str
    model: str
    rating: int | None
    other_model: str | None
    query_embedding: bytes | None


def prompt_of(request: dict[str, Any]) -> Any:
    """What the caller asked, as logged: the chat messages or the prompt."""
    return request.get("messages", request.get("prompt"))


VALID_RATINGS = (-1, 0, 1)


def _contradiction(earlier: Feedback) -> str:
    """Why a vote is refused, naming the earlier vote it contradicts."""
    if earlier.preferred_over_id is None:
        shown = f"{earlier.rating:+d}" if earlier.rating else "0"  # +1, 0, -1
        return f"response {earlier.response_id} was already rated {shown}; a response is rated once"
    return (
        f"response {earlier.response_id} was already preferred over "
        f"{earlier.preferred_over_id}; a pair of responses is compared once"
    )


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
        row and ``False``. Feedback that contradicts this user's earlier vote
        on the same response or pair raises ``Conflict`` (module docstring).
        """
        if (rating is None) == (preferred_over_id is None):
            raise ValueError("give either a rating or preferred_over, not both or neither")
        if rating is not None and rating not in VALID_RATINGS:
            raise ValueError(f"rating must be one of {VALID_RATINGS}")
        if preferred_over_id == response_id:
            raise ValueError("a response cannot be preferred over itself")
        responses = ResponseRepository(self.session)
        rated = responses.get_for_user(response_id=response_id, user_id=user_id)
        if preferred_over_id is not None:
            other = responses.get_for_user(response_id=preferred_over_id, user_id=user_id)
            if prompt_of(rated.request) != prompt_of(other.request):
                raise InvalidInput(
                    f"responses {response_id} and {preferred_over_id} answer different prompts; "
                    "a preference compares two answers to the same prompt"
                )
            dedupe_key = f"prefer:{response_id}>{preferred_over_id}"
            # The reverse order of the same pair is the one vote that contradicts this.
            conflicting = {f"prefer:{preferred_over_id}>{response_id}"}
        else:
            dedupe_key = f"rate:{response_id}:{rating}"
            # Exact keys rather than a LIKE on "rate:{id}:%": ids may hold "_" or
            # "%", and exact keys use the (user_id, dedupe_key) unique index.
            conflicting = {f"rate:{response_id}:{other}" for other in VALID_RATINGS} - {dedupe_key}

        # A repeat needs no lock: rows are never changed, so a match stays true.
        existing = self._find(user_id=user_id, dedupe_key=dedupe_key)
        if existing is not None:
            return existing, False
        self._serialise_feedback_ids()
        # Under the lock now, so a vote committed meanwhile (the same one or a
        # contradicting one) is visible and no other can commit before this one.
        existing = self._find(user_id=user_id, dedupe_key=dedupe_key)
        if existing is not None:
            return existing, False
        earlier = self._find_any(user_id=user_id, dedupe_keys=conflicting)
        if earlier is not None:
            raise Conflict(_contradiction(earlier))
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

    def _serialise_feedback_ids(self) -> None:
        """Make feedback ids commit in the order they are handed out.

        The router replays feedback in id order and reads new feedback "after
        the last id it applied": with two writers, a later id committing first
        would let it skip the earlier one. PostgreSQL gets a transaction-scoped
        advisory lock; SQLite already admits one writer at a time.
        """
        if self.session.get_bind().dialect.name == "postgresql":
            self.session.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _FEEDBACK_ORDER_LOCK}
            )

    def _find(self, *, user_id: str, dedupe_key: str) -> Feedback | None:
        query = select(Feedback).where(
            Feedback.user_id == user_id, Feedback.dedupe_key == dedupe_key
        )
        return self.session.scalar(query)

    def _find_any(self, *, user_id: str, dedupe_keys: set[str]) -> Feedback | None:
        query = (
            select(Feedback)
            .where(Feedback.user_id == user_id, Feedback.dedupe_key.in_(sorted(dedupe_keys)))
            .order_by(Feedback.id)
            .limit(1)
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

    def for_routing_after(
        self, *, after_id: int = 0, limit: int = 1000
    ) -> list[FeedbackForRouting]:
        """Feedback in id order with the models it is about, for the router to learn from.

        Feedback an admin's routing reset covers (the user's
        ``route_reset_feedback_id`` >= its id) is left out; the user's later
        feedback counts again. The limit counts the rows returned, so paging
        on "after the last id returned" still reaches the end.
        """
        other = aliased(Response)
        query = (
            select(
                Feedback.id,
                Feedback.user_id,
                Feedback.response_id,
                Response.base_model_id,
                Feedback.rating,
                other.base_model_id,
                Response.query_embedding,
            )
            .join(Response, Response.id == Feedback.response_id)
            .outerjoin(other, other.id == Feedback.preferred_over_id)
            # A primary-key lookup per row: the scan stays the id range of feedback.
            .join(User, User.id == Feedback.user_id)
            .where(
                Feedback.id > after_id,
                func.coalesce(User.route_reset_feedback_id, 0) < Feedback.id,
            )
            .order_by(Feedback.id)
            .limit(limit)
        )
        return [FeedbackForRouting(*row) for row in self.session.execute(query)]

    def liked_responses(self, *, user_id: str) -> list[Response]:
        """The user's responses they rated +1 or preferred over another, oldest first."""
        liked = select(Feedback.response_id).where(
            Feedback.user_id == user_id,
            (Feedback.rating == 1) | Feedback.preferred_over_id.is_not(None),
        )
        query = (
            select(Response)
            .where(Response.user_id == user_id, Response.id.in_(liked))
            .order_by(Response.created_at, Response.id)
        )
        return list(self.session.scalars(query))
