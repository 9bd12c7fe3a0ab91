"""``POST /v1/feedback``: rate a response, or prefer one over another.

One vote per response rated and per pair compared: a repeat is answered 200
with the stored row, a contradiction 409 ``feedback_conflict`` with nothing
stored (the rules live in ``FeedbackRepository.record``).
"""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from serving.deps import OptionalRuntimeDep, SessionDep, UserDep
from serving.errors import ApiError
from serving.user_schemas import FeedbackCreate, FeedbackPublic
from storage.errors import Conflict
from storage.repositories import FeedbackRepository

router = APIRouter(prefix="/v1", tags=["feedback"])


@router.post(
    "/feedback",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": FeedbackPublic, "description": "The same feedback again: the stored row"}
    },
)
def give_feedback(
    body: FeedbackCreate,
    user: UserDep,
    session: SessionDep,
    response: Response,
    runtime: OptionalRuntimeDep,
) -> FeedbackPublic:
    assert user.user_id is not None
    try:
        feedback, new = FeedbackRepository(session).record(
            user_id=user.user_id,
            response_id=body.response_id,
            rating=body.rating,
            preferred_over_id=body.preferred_over,
        )
    except Conflict as exc:
        # Its own code, so that a client can tell "you already voted the other
        # way" from the generic state clashes that `conflict` names.
        raise ApiError(409, str(exc), code="feedback_conflict") from None
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
