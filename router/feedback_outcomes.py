"""Feedback on responses, turned into the pairwise games the ratings learn from
and the rewards the quality model learns from.

A preference between two answers to the same prompt is one game between the
models that wrote them (none when one model wrote both). A rating has no
opponent, so it is read as a game against every other candidate: +1 means
"this model did well here", a win over each; -1 a loss to each; 0 a draw
with each, which pulls the model's rating towards the others'.

For the quality model a rating is a reward in [0, 1] for its model ((r + 1) / 2),
and a preference is 1 for the winner's model and 0 for the loser's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from router.elo import Outcome


@dataclass(frozen=True)
class FeedbackEvent:
    """One stored piece of feedback with what the router needs of its responses."""

    feedback_id: int
    user_id: str
    model: str  # the base model of the rated (or preferred) response
    rating: int | None = None
    other_model: str | None = None  # the base model of the response it was preferred over
    vector: npt.NDArray[np.float32] | None = None  # the query embedding, when it was stored
    response_id: str | None = None

    def __post_init__(self) -> None:
        if (self.rating is None) == (self.other_model is None):
            raise ValueError("a feedback event is a rating or a preference, not both or neither")
        if self.rating is not None and self.rating not in (-1, 0, 1):
            raise ValueError("a rating is -1, 0 or 1")


def outcomes_for(event: FeedbackEvent, models: Iterable[str]) -> list[Outcome]:
    """The games ``event`` stands for among ``models`` (unknown models are left out)."""
    known = set(models)
    if event.model not in known:
        return []
    if event.other_model is not None:
        if event.other_model == event.model or event.other_model not in known:
            return []
        return [Outcome(event.model, event.other_model)]
    others = sorted(known - {event.model})
    if event.rating == 1:
        return [Outcome(event.model, other) for other in others]
    if event.rating == -1:
        return [Outcome(other, event.model) for other in others]
    return [Outcome(event.model, other, draw=True) for other in others]


def rewards_for(event: FeedbackEvent, models: Iterable[str]) -> dict[str, float]:
    """The per-model rewards ``event`` stands for (empty when it teaches nothing)."""
    known = set(models)
    if event.model not in known:
        return {}
    if event.other_model is not None:
        if event.other_model == event.model or event.other_model not in known:
            return {}
        return {event.model: 1.0, event.other_model: 0.0}
    assert event.rating is not None
    return {event.model: (event.rating + 1) / 2}
