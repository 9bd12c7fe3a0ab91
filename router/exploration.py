"""Bounded exploration: Thompson sampling within a budget, reproducible.

A router that only exploits locks onto whichever model looked best first, and never learns
that another improved or that its favourite started failing: feedback only ever rates the
answer it chose. So a small share of requests goes to the model a posterior sample prefers.

The draw is a pure function of (user, query text, how many votes the user has given): the
same request against the same learnt state makes the same choice, so a restarted router
decides exactly as before; other users' feedback never reshuffles it; and a user's budget
holds in expectation without any counter to lose.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt


def exploration_rng(user_id: str, text: str, state_id: int) -> np.random.Generator:
    digest = hashlib.blake2b(digest_size=16)
    for part in (user_id, text, str(state_id)):
        data = part.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return np.random.default_rng(int.from_bytes(digest.digest(), "little"))


def thompson_choice(
    rng: np.random.Generator,
    utilities: Sequence[float],
    stds: Sequence[float],
    *,
    rate: float,
) -> int | None:
    """Index of the option a posterior sample prefers, or None when this request does not
    explore (its budget draw failed). The caller still checks the regret bound."""
    if rng.random() >= rate:
        return None
    mean = np.asarray(utilities, dtype=np.float64)
    spread: npt.NDArray[np.float64] = np.asarray(stds, dtype=np.float64)
    sample = mean + spread * rng.standard_normal(len(mean))
    return int(np.argmax(sample))
