"""How much one user's feedback may move what every other user is routed by.

A user's own routing always learns from every one of their votes at full weight (their own
evidence, router/neighbour_evidence.py). What this module bounds is the weight a vote has in
the *shared* estimate, which everyone else is routed by. Two limits, the smaller wins:

1. **Credit earned from everyone else's votes.** A user starts with ``full_votes`` votes of
   credit; each vote spends what it weighs; while others vote, the user earns ``max_share``
   of their weight back, never holding more than ``full_votes``. So a user alone on a new
   service counts as ``full_votes`` votes however much they vote; in a crowd, where others
   add far more than 1 / ``max_share`` votes between one user's votes, everyone counts
   fully and the shared estimate learns at the crowd's pace; and a burst (fifty votes in a
   row, from a new account or one that sat silent) counts as ``full_votes`` at most, since
   credit is earned while others vote and cannot be saved up. (An absolute lifetime cap
   cannot do both: small enough for the lone user, it starves the shared estimate once
   there are hundreds of users; a share of everyone's total lets a burst take that share
   at once.)

2. **Trust.** Each vote is scored by how surprising it was to the shared estimate, against
   how surprising the estimate expected it to be: for an outcome y it gave probability p,
   the excess surprise is (p - y) * logit(p), mean zero when users vote as the estimate
   expects. A user's recent excess (older votes discounted by ``memory`` per vote) divided
   by its standard deviation is a z-score; while it stays under ``trusted_z`` the user's
   votes count fully, beyond that their weight fades as exp(trusted_z - z). A user who
   keeps contradicting what everyone else taught fades out of the shared estimate within
   a few votes and keeps shaping their own routing; trust comes back once their votes agree
   again (e.g. after a model really changed and the shared estimate caught up). Where the
   shared estimate knows little (p near 0.5) no vote is surprising: trust only bites where
   there is a consensus to contradict, which is why the credit limit is needed as well.

Feedback without a user (an offline data set's labels) always counts fully and earns
nobody credit. Everything is a function of the votes in order: replaying them rebuilds the
same weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# Keeps logit(p) finite for a confident estimate.
_P_FLOOR = 1e-3
# Variance added under the z-score's square root, a few votes' worth: one vote on its own,
# however surprising, cannot make a user untrusted (when a model really starts failing,
# every user's first vote about it is a surprise), a run of them does.
_PRIOR_VARIANCE = 4.0


@dataclass(frozen=True)
class Surprise:
    """What the shared estimate expected of one vote: the probability ``p`` it gave to the
    outcome "1" and the outcome ``y`` in [0, 1] the user gave (for a preference, p is the
    probability that the preferred answer wins and y = 1)."""

    p: float
    y: float

    @property
    def excess(self) -> float:
        p = min(max(self.p, _P_FLOOR), 1.0 - _P_FLOOR)
        return (p - self.y) * math.log(p / (1.0 - p))

    @property
    def variance(self) -> float:
        p = min(max(self.p, _P_FLOOR), 1.0 - _P_FLOOR)
        return p * (1.0 - p) * math.log(p / (1.0 - p)) ** 2


@dataclass
class _Record:
    votes: int = 0
    weight: float = 0.0  # total weight in the shared estimate so far
    excess: float = 0.0  # discounted sum of excess surprise
    variance: float = 0.0  # discounted sum of its variance
    credit: float = 0.0  # weight the next votes may still have
    seen_total: float = 0.0  # all users' weight just after this user's last vote


class UserInfluence:
    def __init__(
        self,
        full_votes: int,
        *,
        max_share: float = 0.05,
        trusted_z: float = 2.0,
        memory: float = 0.97,
    ) -> None:
        if full_votes < 1:
            raise ValueError("full_votes must be at least 1")
        if not 0.0 <= max_share < 1.0:
            raise ValueError("max_share must lie in [0, 1)")
        if not (trusted_z >= 0 and math.isfinite(trusted_z)):
            raise ValueError("trusted_z must be non-negative and finite")
        if not 0.0 < memory <= 1.0:
            raise ValueError("memory must lie in (0, 1]")
        self.full_votes = full_votes
        self.max_share = max_share
        self.trusted_z = trusted_z
        self.memory = memory
        self._records: dict[str, _Record] = {}
        self._total = 0.0  # all users' weight in the shared estimate

    def next_weight(self, user_id: str | None, surprise: Surprise | None = None) -> float:
        """Count one more vote of ``user_id`` (with what the shared estimate expected of it,
        when it expected anything); its weight in the shared estimate."""
        if not user_id:
            return 1.0
        record = self._records.get(user_id)
        if record is None:
            record = self._records[user_id] = _Record(
                credit=float(self.full_votes), seen_total=self._total
            )
        record.votes += 1
        if surprise is not None:
            record.excess = self.memory * record.excess + surprise.excess
            record.variance = self.memory * record.variance + surprise.variance
        # Everyone else's weight since this user's last vote (their own was added then).
        earned = self.max_share * (self._total - record.seen_total)
        record.credit = min(float(self.full_votes), record.credit + earned)
        weight = max(0.0, min(1.0, self.trust(user_id), record.credit))
        record.credit -= weight
        record.weight += weight
        self._total += weight
        record.seen_total = self._total
        return weight

    def trust(self, user_id: str) -> float:
        """The weight the user's next vote would have by trust alone, in [0, 1]."""
        z = self.excess_z(user_id)
        return 1.0 if z <= self.trusted_z else math.exp(self.trusted_z - z)

    def excess_z(self, user_id: str) -> float:
        record = self._records.get(user_id)
        if record is None:
            return 0.0
        return record.excess / math.sqrt(record.variance + _PRIOR_VARIANCE)

    def votes(self, user_id: str) -> int:
        record = self._records.get(user_id)
        return 0 if record is None else record.votes

    def shared_weight(self, user_id: str) -> float:
        """The total weight the user's votes have had in the shared estimate."""
        record = self._records.get(user_id)
        return 0.0 if record is None else record.weight

    def users(self) -> list[str]:
        return sorted(self._records)

    # ---- snapshots -----------------------------------------------------------------------

    def state(self) -> dict[str, npt.NDArray[np.generic]]:
        users = self.users()
        records = [self._records[u] for u in users]
        return {
            "users": np.array(users, dtype=np.str_),
            "votes": np.array([r.votes for r in records], dtype=np.int64),
            "numbers": np.array(
                [[r.weight, r.excess, r.variance, r.credit, r.seen_total] for r in records],
                dtype=np.float64,
            ).reshape(len(records), 5),
            # Kept, not recomputed: a different summation order could move it by a rounding
            # error, and a restarted router must decide exactly as before.
            "total": np.array([self._total], dtype=np.float64),
        }

    def load_state(self, arrays: dict[str, npt.NDArray[np.generic]]) -> None:
        users, votes, numbers = arrays["users"], arrays["votes"], arrays["numbers"]
        if not (len(users) == len(votes) == len(numbers)) or numbers.shape[1:] != (5,):
            raise ValueError("the snapshot's influence arrays disagree with each other")
        self._records = {
            str(u): _Record(int(v), *(float(x) for x in row))
            for u, v, row in zip(users, votes, numbers.tolist(), strict=True)
        }
        self._total = float(arrays["total"][0])
