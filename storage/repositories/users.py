"""Users of the service, with their routing preferences and routing resets.

A routing reset is a marker on the user's row (the highest feedback id it
covers), never a deletion: the feedback stays for the user's own data and
fine-tunes, and only the router's replay (``FeedbackRepository.for_routing_after``)
leaves it out.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.clock import utc_now
from storage.errors import Conflict, NotFound
from storage.ids import new_id
from storage.tables import Feedback, User

# The largest generic-text rise a limit may allow (10.0: the NLL may grow elevenfold):
# past it the check means nothing. TAILOR_FINETUNE_MAX_GENERIC_RISE has the same bound.
MAX_GENERIC_RISE = 10.0
# The largest share of the factual probes a limit may let a candidate lose (below 1:
# losing every fact is never allowed). TAILOR_FINETUNE_MAX_PROBE_LOSS has the same bound.
MAX_PROBE_LOSS = 0.5
# A user's own fine-tune gate limits: API name -> (column, largest value).
FINETUNE_LIMITS = {
    "max_generic_rise": ("finetune_max_generic_rise", MAX_GENERIC_RISE),
    "max_probe_loss": ("finetune_max_probe_loss", MAX_PROBE_LOSS),
}


class UserRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def create(self, *, name: str) -> User:
        name = name.strip()
        if not name:
            raise ValueError("a user needs a non-empty name")
        user = User(id=new_id("usr"), name=name, created_at=utc_now())
        try:
            with self.session.begin_nested():
                self.session.add(user)
        except IntegrityError:
            raise Conflict(f"a user named {name!r} already exists") from None
        return user

    def get(self, *, user_id: str) -> User:
        user = self.session.get(User, user_id)
        if user is None:
            raise NotFound(f"user {user_id} not found")
        return user

    def list_page(self, *, limit: int = 100, after: str | None = None) -> list[User]:
        """A page of users in creation order; ``after`` is the last id of the previous page."""
        query = select(User).order_by(User.created_at, User.id).limit(limit)
        if after is not None:
            cursor = self.get(user_id=after)
            query = query.where(
                (User.created_at > cursor.created_at)
                | ((User.created_at == cursor.created_at) & (User.id > cursor.id))
            )
        return list(self.session.scalars(query))

    def count(self) -> int:
        return self.session.scalar(select(func.count()).select_from(User)) or 0

    def set_routing_preferences(self, *, user_id: str, changes: dict[str, float | None]) -> User:
        """Set (a float) or clear (None) some of ``ROUTING_PREFERENCES``; the rest stay."""
        unknown = sorted(set(changes) - set(ROUTING_PREFERENCES))
        if unknown:
            raise ValueError(f"unknown routing preference(s): {', '.join(unknown)}")
        for name, value in changes.items():
            if value is not None and (value < 0 or (name == "latency_slo_seconds" and value == 0)):
                raise ValueError(f"{name} must be positive")
        user = self.get(user_id=user_id)
        for name, value in changes.items():
            setattr(user, ROUTING_PREFERENCES[name], value)
        self.session.flush()
        return user

    def set_finetune_limits(self, *, user_id: str, changes: dict[str, float | None]) -> User:
        """Set (a float) or clear (None) some of the user's own fine-tune gate limits
        (``FINETUNE_LIMITS``); the rest stay. None: the service's setting."""
        unknown = sorted(set(changes) - set(FINETUNE_LIMITS))
        if unknown:
            raise ValueError(f"unknown fine-tune limit(s): {', '.join(unknown)}")
        for name, value in changes.items():
            highest = FINETUNE_LIMITS[name][1]
            if value is not None and not 0 <= value <= highest:
                raise ValueError(f"{name} must lie in [0, {highest}]")
        user = self.get(user_id=user_id)
        for name, value in changes.items():
            setattr(user, FINETUNE_LIMITS[name][0], value)
        self.session.flush()
        return user

    def reset_routing_influence(self, *, user_id: str) -> User:
        """Make the router ignore all the user's feedback so far; later feedback counts again.

        The marker is the newest feedback id of anyone (0 if there is none):
        the user's own feedback can only be older. A reset again moves it on.
        """
        user = self.get(user_id=user_id)
        newest = self.session.scalar(select(func.max(Feedback.id)))
        user.route_reset_feedback_id = newest or 0
        user.route_reset_at = utc_now()
        self.session.flush()
        return user

    def last_routing_reset(self) -> datetime | None:
        """When any user's routing influence was last reset: the router's
        processes compare it with what they saw to know when to rebuild."""
        return self.session.scalar(select(func.max(User.route_reset_at)))


# Preference name (as the API says it) -> column of the users table.
ROUTING_PREFERENCES = {
    "cost_weight": "route_cost_weight",
    "max_price": "route_max_price",
    "latency_slo_seconds": "route_latency_slo_seconds",
}
