"""``GET/PATCH /v1/routing``: the caller's own routing preferences."""

from __future__ import annotations

from fastapi import APIRouter

from serving.deps import SessionDep, UserDep
from serving.routing_schemas import RoutingPreferencesPublic, RoutingPreferencesUpdate
from storage.repositories import UserRepository

router = APIRouter(prefix="/v1", tags=["routing"])


@router.get("/routing")
def get_preferences(user: UserDep, session: SessionDep) -> RoutingPreferencesPublic:
    assert user.user_id is not None
    return RoutingPreferencesPublic.of(UserRepository(session).get(user_id=user.user_id))


@router.patch("/routing")
def update_preferences(
    body: RoutingPreferencesUpdate, user: UserDep, session: SessionDep
) -> RoutingPreferencesPublic:
    assert user.user_id is not None
    updated = UserRepository(session).set_routing_preferences(
        user_id=user.user_id, changes=body.changes()
    )
    session.commit()
    return RoutingPreferencesPublic.of(updated)
