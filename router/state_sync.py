"""The router's state from SQL: a full replay at start-up, then what is new.

Feedback is the source of truth and is replayed in id order, which is the
order the live router applied it (feedback ids commit in order, see
FeedbackRepository), so a restarted router has exactly the ratings it had.
Output lengths are relearnt from the latest responses.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from router.eagle_router import EagleRouter
from router.feedback_outcomes import FeedbackEvent
from storage.database import Database
from storage.repositories import FeedbackForRouting, FeedbackRepository, ResponseRepository

PAGE = 2000
LENGTH_HISTORY = 5000


def embedding_bytes(vector: npt.ArrayLike) -> bytes:
    """How a query embedding is stored: little-endian float32."""
    return np.asarray(vector, dtype="<f4").tobytes()


def embedding_from_bytes(data: bytes, dimensions: int) -> npt.NDArray[np.float32] | None:
    vector = np.frombuffer(data, dtype="<f4")
    # An embedding of another size (another embedder) cannot be compared: skip it.
    return vector.astype(np.float32) if vector.size == dimensions else None


def _event(row: FeedbackForRouting, dimensions: int) -> FeedbackEvent | None:
    if row.rating is None and row.other_model is None:
        return None  # a preference whose other response is gone
    vector = (
        None
        if row.query_embedding is None
        else embedding_from_bytes(row.query_embedding, dimensions)
    )
    return FeedbackEvent(
        feedback_id=row.feedback_id,
        user_id=row.user_id,
        response_id=row.response_id,
        model=row.model,
        rating=row.rating if row.other_model is None else None,
        other_model=row.other_model,
        vector=vector,
    )


def sync_feedback(router: EagleRouter, database: Database) -> int:
    """Apply every piece of feedback stored after the last one the router has; returns how many."""
    applied = 0
    while True:
        with database.session() as session:
            rows = FeedbackRepository(session).for_routing_after(
                after_id=router.last_feedback_id, limit=PAGE
            )
        for row in rows:
            event = _event(row, router.embedder.dimensions)
            if event is None:
                router.skip_feedback(row.feedback_id)
            else:
                applied += router.apply_feedback(event)
        if len(rows) < PAGE:
            return applied


def relearn_lengths(router: EagleRouter, database: Database, *, limit: int = LENGTH_HISTORY) -> int:
    with database.session() as session:
        rows = ResponseRepository(session).recent_lengths(limit=limit)
    learnt = 0
    for model, data, prompt_tokens, completion_tokens in rows:
        vector = embedding_from_bytes(data, router.embedder.dimensions)
        if vector is not None:
            router.observe_length(
                model, vector, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
            )
            learnt += 1
    return learnt
