"""Each user's own ELO ratings, fed only by that user's feedback.

Blended into the shared (Eagle) rating with weight n / (n + prior) after n
pieces of the user's feedback: a new user gets the shared behaviour, a user
who keeps preferring another model ends up with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from router.elo import EloRatings, Outcome


@dataclass
class UserRating:
    elo: EloRatings
    feedback: int = 0  # pieces of feedback that carried at least one game


class UserRatings:
    def __init__(
        self, models: Sequence[str], *, k: float, initial: float, prior_games: float
    ) -> None:
        self.models = list(models)
        self.k = k
        self.initial = initial
        self.prior_games = prior_games
        self._users: dict[str, UserRating] = {}

    def __contains__(self, user_id: str) -> bool:
        return user_id in self._users

    def users(self) -> list[str]:
        return sorted(self._users)

    def observe(self, user_id: str, outcomes: Iterable[Outcome]) -> None:
        games = list(outcomes)
        if not games:
            return
        entry = self._users.get(user_id)
        if entry is None:
            entry = UserRating(EloRatings(self.models, k=self.k, initial=self.initial))
            self._users[user_id] = entry
        entry.elo.apply(games)
        entry.feedback += 1

    def weight(self, user_id: str) -> float:
        entry = self._users.get(user_id)
        if entry is None:
            return 0.0
        return entry.feedback / (entry.feedback + self.prior_games)

    def feedback_count(self, user_id: str) -> int:
        entry = self._users.get(user_id)
        return 0 if entry is None else entry.feedback

    def ratings(self, user_id: str) -> dict[str, float]:
        entry = self._users.get(user_id)
        if entry is None:
            return dict.fromkeys(self.models, self.initial)
        return dict(entry.elo.ratings)
