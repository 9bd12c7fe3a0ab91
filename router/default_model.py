"""The model ``auto`` answers with before the router has learnt anything: one rule, here.

The rule: the configured default model (``TAILOR_DEFAULT_MODEL``) if it is among the
usable candidates, else the cheapest of them by configured price
(``cost_per_million_tokens``), ties broken by model id. Every caller that needs "the
model ``auto`` would answer with" asks this module, so the routers and the fine-tune
route's ``model: "auto"`` cannot drift apart:

- ``DefaultModelRouter`` (no learning router yet),
- ``EagleRouter``'s incumbent when the user has no specialist,
- ``POST /v1/fine-tunes`` with ``model: "auto"``.

Which candidates are usable (a chat template for a chat, the caller's price ceiling) is
the caller's filter; this rule only picks among what it is given.

Invariants: the result is one of the candidates' ids; it depends on their ids and prices
and the configured default only, never on the order they are listed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from router.decision import Candidate
from router.errors import NoRoute


def cheapest(candidates: Iterable[Candidate]) -> Candidate:
    """The candidate with the lowest configured price; ties go to the smallest id."""
    listed = list(candidates)
    if not listed:
        raise NoRoute("no candidate base model")
    return min(listed, key=lambda c: (c.cost_per_million_tokens, c.model))


def default_model(candidates: Sequence[Candidate], configured: str | None) -> str:
    """The id ``auto`` answers with among ``candidates`` before any feedback.

    ``configured`` if one of the candidates has that id, else the cheapest candidate.
    Raises ``NoRoute`` when there are no candidates.
    """
    if configured is not None and any(c.model == configured for c in candidates):
        return configured
    return cheapest(candidates).model
