"""``POST /v1/feedback``: rate a response, or prefer one over another."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from serving.deps import OptionalRuntimeDep, SessionDep, UserDep
from serving.user_schemas import FeedbackCreate, FeedbackPublic
from storage.repositories import FeedbackRepository

router = APIRouter(prefix="/v1", tags=["feedback"])


@router.post("/feedback", status_code=status.HTTP_201_CREATED)
def give_feedback(
    body: FeedbackCreate,
    user: UserDep,
    session: SessionDep,
    response: Response,
    runtime: OptionalRuntimeDep,
) -> FeedbackPublic:
    assert user.user_id is not None
    feedback, new = FeedbackRepository(session).record(
        user_id=user.user_id,
        response_id=body.response_id,
        rating=body.rating,
        preferred_over_id=body.preferred_over,
    )
    session.commit()
    if new and runtime is not None:
        # The router learns from it before this answer goes back.
        runtime.sync_router()
    if not new:
        response.status_code = status.HTTP_200_OK  # the same feedback counts once
    return FeedbackPublic(
        id=feedback.id,
        response_id=feedback.response_id,
        rating=feedback.rating,
        preferred_over=feedback.preferred_over_id,
        duplicate=not new,
        created_at=feedback.created_at,
    )
