"""How much one user's feedback may move what every other user is routed by.

A user's first ``full_votes`` pieces of feedback count fully in the shared estimate; the
n-th after that counts (full_votes / n)^2, so that however much one user votes, their total
weight in the shared model stays under 2 x full_votes (the sum of 1/n^2 converges). Their
own routing still learns from every vote (the user's own evidence,
router/neighbour_evidence.py): a user can change their routes, never everyone's.

Feedback without a user (an offline data set's labels) always counts fully.
"""

from __future__ import annotations

from collections import Counter


class UserInfluence:
    def __init__(self, full_votes: int) -> None:
        if full_votes < 1:
            raise ValueError("full_votes must be at least 1")
        self.full_votes = full_votes
        self._votes: Counter[str] = Counter()

    def next_weight(self, user_id: str | None) -> float:
        """Count one more vote of ``user_id``; its weight in the shared estimate."""
        if not user_id:
            return 1.0
        self._votes[user_id] += 1
        n = self._votes[user_id]
        return 1.0 if n <= self.full_votes else (self.full_votes / n) ** 2

    def votes(self, user_id: str) -> int:
        return self._votes[user_id]

    def shared_weight(self, user_id: str) -> float:
        """The total weight the user's votes have had in the shared estimate."""
        n = self._votes[user_id]
        full = min(n, self.full_votes)
        return full + sum((self.full_votes / k) ** 2 for k in range(self.full_votes + 1, n + 1))

    def users(self) -> list[str]:
        return sorted(self._votes)

    def state(self) -> dict[str, int]:
        return dict(self._votes)

    def load_state(self, votes: dict[str, int]) -> None:
        self._votes = Counter({str(k): int(v) for k, v in votes.items()})
